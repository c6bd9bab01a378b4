"""Pictures: sample grids written as PNG and read back (:mod:`.grids`), figures drawn with
matplotlib (:mod:`.figures`), and the forward-process picture of `visualize-forward`
(:mod:`.forward`)."""
