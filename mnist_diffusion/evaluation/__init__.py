"""Sample quality: the metrics (:mod:`.metrics`), the feature net they are computed in
(:mod:`.features`), and the scoring of a run or of sample files (:mod:`.scoring`)."""
