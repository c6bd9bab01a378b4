"""What a person reads about runs: ``report.html`` of one run (run_report) and ``index.html`` of
all of them (index), each one self-contained file."""
