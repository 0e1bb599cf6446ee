// Python entry points of the matmul unit and the binary SFPU, over numpy arrays: for the property tests
// that compare them with runtime/numerics.py, byte for byte.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "numerics.h"

namespace py = pybind11;

namespace ttc {
namespace {

using Tiles = py::array_t<float, py::array::c_style | py::array::forcecast>;

DstFormat dst_format_of(const std::string& name) {
  if (name == "bf16") return DstFormat::BF16;
  if (name == "f16") return DstFormat::F16;
  throw std::invalid_argument("unknown Dst format '" + name + "' (bf16 or f16)");
}

Fidelity fidelity_of(int phases) {
  if (phases < 1 || phases > 4) throw std::invalid_argument("math fidelity is 1..4 passes");
  return static_cast<Fidelity>(phases);
}

// Pointers to the tiles of a [count, 32, 32] array.
template <typename T>
std::vector<T*> tile_pointers(T* base, py::ssize_t count) {
  std::vector<T*> out(static_cast<size_t>(count));
  for (py::ssize_t t = 0; t < count; ++t) out[t] = base + t * TILE_ELEMS;
  return out;
}

void check_tiles(const Tiles& tiles, py::ssize_t count, const char* name) {
  if (tiles.ndim() != 3 || tiles.shape(0) != count || tiles.shape(1) != TILE || tiles.shape(2) != TILE)
    throw std::invalid_argument(std::string(name) + " must be [" + std::to_string(count) + ", 32, 32] tiles");
}

Tiles matmul_block_py(const Tiles& dst, const Tiles& a, const Tiles& b, int rows, int cols, int inner,
                      int fidelity, const std::string& dst_format, bool bf16_operands) {
  check_tiles(dst, static_cast<py::ssize_t>(rows) * cols, "dst");
  check_tiles(a, static_cast<py::ssize_t>(rows) * inner, "a");
  check_tiles(b, static_cast<py::ssize_t>(inner) * cols, "b");
  Tiles out(std::vector<py::ssize_t>{dst.shape(0), TILE, TILE});
  std::copy(dst.data(), dst.data() + dst.size(), out.mutable_data());
  auto out_tiles = tile_pointers(out.mutable_data(), out.shape(0));
  auto a_tiles = tile_pointers(a.data(), a.shape(0));
  auto b_tiles = tile_pointers(b.data(), b.shape(0));
  Fidelity f = fidelity_of(fidelity);
  DstFormat format = dst_format_of(dst_format);
  {
    py::gil_scoped_release release;
    matmul_block(out_tiles.data(), a_tiles.data(), b_tiles.data(), rows, cols, inner, f, format, bf16_operands);
  }
  return out;
}

// matmul_block_bf16: a and b are packed bf16 tiles ([count, 2048] bytes in face order, as pack_tiles makes them).
Tiles matmul_block_bf16_py(const Tiles& dst, const py::array_t<uint8_t, py::array::c_style>& a,
                           const py::array_t<uint8_t, py::array::c_style>& b, int rows, int cols, int inner,
                           int fidelity, const std::string& dst_format) {
  check_tiles(dst, static_cast<py::ssize_t>(rows) * cols, "dst");
  auto pages = [](const py::array_t<uint8_t, py::array::c_style>& x, py::ssize_t count, const char* name) {
    if (x.ndim() != 2 || x.shape(0) != count || x.shape(1) != 2 * TILE_ELEMS)
      throw std::invalid_argument(std::string(name) + " must be [" + std::to_string(count) + ", 2048] bf16 tiles");
    std::vector<const uint16_t*> out(static_cast<size_t>(count));
    for (py::ssize_t t = 0; t < count; ++t) out[t] = reinterpret_cast<const uint16_t*>(x.data() + t * 2 * TILE_ELEMS);
    return out;
  };
  auto a_tiles = pages(a, static_cast<py::ssize_t>(rows) * inner, "a");
  auto b_tiles = pages(b, static_cast<py::ssize_t>(inner) * cols, "b");
  Tiles out(std::vector<py::ssize_t>{dst.shape(0), TILE, TILE});
  std::copy(dst.data(), dst.data() + dst.size(), out.mutable_data());
  auto out_tiles = tile_pointers(out.mutable_data(), out.shape(0));
  Fidelity f = fidelity_of(fidelity);
  DstFormat format = dst_format_of(dst_format);
  {
    py::gil_scoped_release release;
    matmul_block_bf16(out_tiles.data(), a_tiles.data(), b_tiles.data(), rows, cols, inner, f, format);
  }
  return out;
}

ReduceDim reduce_dim_of(const std::string& name) {
  if (name == "row") return ReduceDim::ROW;
  if (name == "col") return ReduceDim::COL;
  if (name == "scalar") return ReduceDim::SCALAR;
  throw std::invalid_argument("unknown reduce dim '" + name + "' (row, col or scalar)");
}

Tiles reduce_sum_py(const Tiles& dst, const Tiles& tiles, const std::string& dim, float scaler, int fidelity,
                    const std::string& dst_format) {
  if (dst.ndim() != 2 || dst.shape(0) != TILE || dst.shape(1) != TILE)
    throw std::invalid_argument("dst must be a [32, 32] tile");
  check_tiles(tiles, tiles.ndim() == 3 ? tiles.shape(0) : -1, "tiles");
  Tiles out(std::vector<py::ssize_t>{TILE, TILE});
  std::copy(dst.data(), dst.data() + dst.size(), out.mutable_data());
  auto in = tile_pointers(tiles.data(), tiles.shape(0));
  ReduceDim d = reduce_dim_of(dim);
  Fidelity f = fidelity_of(fidelity);
  DstFormat format = dst_format_of(dst_format);
  {
    py::gil_scoped_release release;
    reduce_sum_block(out.mutable_data(), in.data(), static_cast<int>(tiles.shape(0)), d, scaler, f, format);
  }
  return out;
}

SfpuBinaryFn sfpu_binary_fn_of(const std::string& name) {
  if (name == "pow") return SfpuBinaryFn::POW;
  if (name == "where_nez") return SfpuBinaryFn::WHERE_NEZ;
  if (name == "where_eqz") return SfpuBinaryFn::WHERE_EQZ;
  throw std::invalid_argument("unknown binary SFPU function '" + name + "'");
}

py::array_t<float> sfpu_binary_py(const py::array_t<float, py::array::c_style | py::array::forcecast>& a,
                                  const py::array_t<float, py::array::c_style | py::array::forcecast>& b,
                                  const std::string& fn, const std::string& dst_format) {
  if (a.size() != b.size()) throw std::invalid_argument("a and b must have the same number of values");
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  py::array_t<float> out(shape);
  std::copy(a.data(), a.data() + a.size(), out.mutable_data());
  SfpuBinaryFn f = sfpu_binary_fn_of(fn);
  DstFormat format = dst_format_of(dst_format);
  {
    py::gil_scoped_release release;
    sfpu_binary_tile(out.mutable_data(), b.data(), static_cast<int>(a.size()), f, format);
  }
  return out;
}

}  // namespace

void register_matmul(py::module_& m) {
  m.def("matmul_block", &matmul_block_py, py::arg("dst"), py::arg("a"), py::arg("b"), py::arg("rows"),
        py::arg("cols"), py::arg("inner"), py::arg("fidelity"), py::arg("dst_format") = "bf16",
        py::arg("bf16_operands") = false,
        "Dst tiles dst [rows*cols, 32, 32] += a [rows*inner] @ b [inner*cols] (numerics.matmul_block_accumulate); "
        "returns the new Dst tiles.");
  m.def("matmul_block_bf16", &matmul_block_bf16_py, py::arg("dst"), py::arg("a"), py::arg("b"), py::arg("rows"),
        py::arg("cols"), py::arg("inner"), py::arg("fidelity"), py::arg("dst_format") = "bf16",
        "matmul_block with packed bf16 operand tiles (uint8 [count, 2048], the device's face order, as "
        "pack_tiles gives them), read in place; returns the new Dst tiles.");
  m.def("reduce_sum", &reduce_sum_py, py::arg("dst"), py::arg("tiles"), py::arg("dim"), py::arg("scaler") = 1.0f,
        py::arg("fidelity") = 4, py::arg("dst_format") = "bf16",
        "Dst tile dst [32, 32] accumulates the sum of tiles [n, 32, 32] along dim (numerics.reduce_block, "
        "kind sum); returns the new Dst tile.");
  m.def("sfpu_binary", &sfpu_binary_py, py::arg("a"), py::arg("b"), py::arg("fn"), py::arg("dst_format") = "bf16",
        "fn(a, b) elementwise on Dst values (numerics.sfpu_binary); returns the result.");
}

}  // namespace ttc
