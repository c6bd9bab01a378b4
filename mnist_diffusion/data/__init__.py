"""The training data and its labels: MNIST on disk and where to get it (:mod:`.mnist`), and the
pixel clusters that serve an unconditional run as self-labels (:mod:`.clusters`)."""
