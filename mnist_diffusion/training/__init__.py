"""Training: the loop (:mod:`.trainer`) and the rules for resuming a run (:mod:`.plan`)."""
