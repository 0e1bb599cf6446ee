"""The emulated Grayskull (`ttc.runtime`).

- `formats`: tile data formats (bf16, Bfp8_b, Bfp4_b, f32, i32), packing bit-exact to the hardware.
- `numerics`: the compute numerics model (16-bit Dst, math fidelity, FPU eltwise, SFPU, reduce).
- `layout`: host tensors <-> device buffer pages (`tensor_to_pages`, `pages_to_tensor`).
- `device`: DRAM channels and per-core L1 as banked byte arrays with allocation tables.
- `interpreter`: runs one `ttmetal.enqueue_program` (reader/compute/writer kernels, lockstep cores): the
  scheduler over `handlers` (the op registry), `dataflow` (CBs, NoC), `compute` (Dst, math, pack) and
  `accounting` (cycle charges, `ProgramProfile`).
- `native_program`: runs the same programs in the native core (`runtime/native/`), bit for bit.
- `executor`: runs a module's host schedule (`Executor(module, device_weights).run(inputs)`).
"""
