"""Sample quality: the metrics (:mod:`.metrics`), the feature net they are computed in
(:mod:`.features`), the real digits they are compared with (:mod:`.reference`), their intervals
(:mod:`.uncertainty`, :mod:`.bootstrap`), the Classification Accuracy Score (:mod:`.cas`), and the
scoring of a run or of sample files (:mod:`.scoring`)."""
