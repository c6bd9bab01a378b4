"""Drawing samples from a trained run (:mod:`.generate`) and writing them to disk (:mod:`.outputs`)."""
