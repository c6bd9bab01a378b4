"""`mnistdiff studio`: a local web page over a trained run (the `studio` extra: FastAPI and uvicorn).

:mod:`.engine` does the work with the library's own functions; :mod:`.requests` checks what a
page may ask; :mod:`.server` is the web app and its server; ``static/`` holds the page itself.
"""
