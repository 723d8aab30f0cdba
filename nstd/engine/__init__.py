"""The optimization engine: the truncated frozen VGG-19 feature extractor (`features`), weight
resolution and loading (`weights`), the pure loss functions (`losses`), the host-sync-free L-BFGS
(`optim`) and `Stylizer` (`stylizer`), which turns a content tensor and style targets into a
stylized tensor; it is built from the objective at one size (`objective`), the run's inputs
(`targets`), progress and early stopping (`tracker`), image tensors (`pixels`) and the device
(`device`). It knows nothing of files, containers or the daemon; layer names live in
`nstd.layers` so that `nstd.config` can check them without importing torch."""
