"""Video modality (issue 20, in progress): so far the moving-shapes world (:mod:`.moving`) -- prompts, a
renderer, a judge of any clip per dimension, and tastes. It is not registered yet: there is no video adapter,
so nothing in the app or the CLI offers video."""
