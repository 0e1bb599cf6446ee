"""The device ops: one module per kind of device program (matmul.py, eltwise.py, row_ops.py, reduce.py,
gather.py, embedding.py, untilize.py, tilize.py), each owning its candidate blockings, its CB plan (L1
footprint), its counts for the cost model and its kernel builder, over the shared geometry (geometry.py),
counting (counting.py) and kernel-building helpers (kernel.py, program.py). `registry` maps an op to its
kind; the grid, layout and allocate passes and lower-to-kernels go through it (interface.py: `DeviceOp`)."""
