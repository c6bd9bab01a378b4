"""Run folders: how a run is stored and never overwritten (:mod:`.store`), its resumable
checkpoint (:mod:`.checkpoint`), a trained run loaded for sampling (:mod:`.loader`), and what
`mnistdiff runs` lists (:mod:`.summary`)."""
