"""Video work: optical flow, warping, consistency masks, scene cuts (`flow`), the plan and
its cut into units (`plan`), what every video job shares (`videojob`), the resumable
frame-by-frame loop that stylizes a whole video (`frames`), the lossless store of finished
frames that is its resume point (`store`), and the warping-error metric E_warp (`ewarp`). It
calls the engine and media I/O and never the daemon or the CLI."""
