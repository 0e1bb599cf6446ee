// TEMPORARY (deleted once branch native-matmul is merged): definitions of the numerics.h functions not
// implemented yet (matmul_block, reduce_sum_block, sfpu_binary_tile), so that the program executor builds
// and can be tested before that part lands. Each calls back into the Python definition
// (runtime/numerics.py) with the GIL held: the reference's bits by construction, only slow.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>

#include "numerics.h"

namespace py = pybind11;

namespace ttc {

namespace {

const char* dst_name(DstFormat f) { return f == DstFormat::F16 ? "f16" : "bf16"; }

const char* fidelity_name(Fidelity f) {
  switch (f) {
    case Fidelity::LOFI: return "lofi";
    case Fidelity::HIFI2: return "hifi2";
    case Fidelity::HIFI3: return "hifi3";
    case Fidelity::HIFI4: return "hifi4";
  }
  return "hifi4";
}

py::module_ numerics() { return py::module_::import("ttc.runtime.numerics"); }

py::array_t<float> tiles_array(const float* const* tiles, int n) {
  py::array_t<float> out({n, TILE, TILE});
  for (int i = 0; i < n; ++i) std::memcpy(out.mutable_data(i), tiles[i], TILE_ELEMS * 4);
  return out;
}

py::array_t<float> tile_array(const float* tile, py::ssize_t count = TILE_ELEMS) {
  py::array_t<float> out(count);
  std::memcpy(out.mutable_data(), tile, count * 4);
  return out;
}

void copy_out(const py::handle& result, float* out, py::ssize_t count) {
  auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(result);
  std::memcpy(out, arr.data(), count * 4);
}

}  // namespace

void matmul_block(float* const* dst, const float* const* a, const float* const* b, int rows, int cols, int inner,
                  Fidelity fidelity, DstFormat format, bool bf16_operands) {
  py::gil_scoped_acquire gil;
  py::array_t<float> acc = tiles_array(const_cast<const float* const*>(dst), rows * cols);
  py::array_t<float> lhs = tiles_array(a, rows * inner), rhs = tiles_array(b, inner * cols);
  py::object out = numerics().attr("matmul_block_accumulate")(
      acc.attr("reshape")(rows, cols, TILE, TILE), lhs.attr("reshape")(rows, inner, TILE, TILE),
      rhs.attr("reshape")(inner, cols, TILE, TILE), fidelity_name(fidelity), py::arg("bf16_operands") = bf16_operands,
      py::arg("dst_format") = dst_name(format));
  auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(out);
  for (int i = 0; i < rows * cols; ++i) std::memcpy(dst[i], arr.data() + i * TILE_ELEMS, TILE_ELEMS * 4);
}

static const char* dim_name(ReduceDim dim) {
  return dim == ReduceDim::ROW ? "row" : dim == ReduceDim::COL ? "col" : "scalar";
}

void reduce_sum_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler, Fidelity fidelity,
                      DstFormat format) {
  py::gil_scoped_acquire gil;
  py::object out = numerics().attr("reduce_block")(tile_array(dst).attr("reshape")(TILE, TILE), tiles_array(tiles, n),
                                                   dim_name(dim), "sum", scaler, fidelity_name(fidelity),
                                                   dst_name(format));
  copy_out(out, dst, TILE_ELEMS);
}

void sfpu_binary_tile(float* a, const float* b, int count, SfpuBinaryFn fn, DstFormat format) {
  static const char* names[] = {"pow", "where_nez", "where_eqz"};
  py::gil_scoped_acquire gil;
  copy_out(numerics().attr("sfpu_binary")(tile_array(a, count), tile_array(b, count), names[static_cast<int>(fn)],
                                          dst_name(format)),
           a, count);
}

}  // namespace ttc
