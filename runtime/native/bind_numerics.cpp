// Python bindings of the numerics primitives (numerics.h), batched over numpy arrays so that the property
// tests can compare them with runtime/formats.py and runtime/numerics.py. Enum arguments are the ints of
// numerics.h; the module's *_CODES dicts map the Python emulator's names to them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "numerics.h"

namespace py = pybind11;

namespace ttc {

void eltwise_bf16_pages(const uint8_t* a, const uint8_t* b, BinaryOp op, Bcast bcast, float* out);  // eltwise.cpp

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using ByteArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

template <typename E>
E checked(int value, int count, const char* what) {
  if (value < 0 || value >= count) throw py::value_error(std::string("unknown ") + what + " " + std::to_string(value));
  return static_cast<E>(value);
}

Format format_arg(int fmt) { return checked<Format>(fmt, 6, "tile format"); }
DstFormat dst_arg(int dst) { return checked<DstFormat>(dst, 2, "Dst format"); }

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// Number of 32x32 tiles in a [..., 32, 32] array.
py::ssize_t tile_count(const py::array& a, const char* name) {
  if (a.ndim() < 2 || a.shape(a.ndim() - 1) != TILE || a.shape(a.ndim() - 2) != TILE) {
    throw py::value_error(std::string(name) + " must be [..., 32, 32] tiles");
  }
  return a.size() / TILE_ELEMS;
}

int int_size(py::ssize_t n) {
  if (n > INT32_MAX) throw py::value_error("array too large");
  return static_cast<int>(n);
}

py::array_t<uint8_t> pack_tiles(const FloatArray& tiles, int fmt) {
  const Format format = format_arg(fmt);
  const py::ssize_t n = tile_count(tiles, "tiles");
  const int bytes = tile_bytes(format);
  std::vector<py::ssize_t> shape = shape_of(tiles);
  shape.pop_back();
  shape.back() = bytes;
  py::array_t<uint8_t> out(shape);
  const float* src = tiles.data();
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (py::ssize_t t = 0; t < n; ++t) pack_tile(src + t * TILE_ELEMS, format, dst + t * bytes);
  }
  return out;
}

// formats.tilize (zero padding to whole tiles) then pack_tiles: float32 matrices [B, R, C] -> uint8
// [B * ceil(R / 32) * ceil(C / 32), tile_bytes], tiles row-major within each matrix.
py::array_t<uint8_t> pack_matrix(const FloatArray& values, int fmt) {
  const Format format = format_arg(fmt);
  if (values.ndim() != 3) throw py::value_error("values must be [batch, rows, cols]");
  const py::ssize_t batch = values.shape(0), rows = values.shape(1), cols = values.shape(2);
  const py::ssize_t rt = (rows + TILE - 1) / TILE, ct = (cols + TILE - 1) / TILE;
  const int bytes = tile_bytes(format);
  py::array_t<uint8_t> out({batch * rt * ct, static_cast<py::ssize_t>(bytes)});
  const float* src = values.data();
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<float> tile(TILE_ELEMS);
    for (py::ssize_t b = 0; b < batch; ++b)
      for (py::ssize_t i = 0; i < rt; ++i)
        for (py::ssize_t j = 0; j < ct; ++j) {
          const py::ssize_t r0 = i * TILE, c0 = j * TILE;
          const py::ssize_t nr = std::min<py::ssize_t>(TILE, rows - r0), nc = std::min<py::ssize_t>(TILE, cols - c0);
          if (nr < TILE || nc < TILE) std::fill(tile.begin(), tile.end(), 0.0f);
          for (py::ssize_t r = 0; r < nr; ++r)
            std::memcpy(&tile[r * TILE], src + (b * rows + r0 + r) * cols + c0, nc * sizeof(float));
          pack_tile(tile.data(), format, dst + ((b * rt + i) * ct + j) * bytes);
        }
  }
  return out;
}

// unpack_tiles then formats.untilize cropped: uint8 pages [B * Rt * Ct, tile_bytes] -> float32 [B, R, C].
py::array_t<float> unpack_matrix(const ByteArray& data, int fmt, py::ssize_t batch, py::ssize_t rows, py::ssize_t cols) {
  const Format format = format_arg(fmt);
  const int bytes = tile_bytes(format);
  const py::ssize_t rt = (rows + TILE - 1) / TILE, ct = (cols + TILE - 1) / TILE;
  if (data.ndim() != 2 || data.shape(1) != bytes || data.shape(0) != batch * rt * ct)
    throw py::value_error("pages must be [batch * row tiles * column tiles, tile_bytes]");
  py::array_t<float> out({batch, rows, cols});
  const uint8_t* src = data.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<float> tile(TILE_ELEMS);
    for (py::ssize_t b = 0; b < batch; ++b)
      for (py::ssize_t i = 0; i < rt; ++i)
        for (py::ssize_t j = 0; j < ct; ++j) {
          unpack_tile(src + ((b * rt + i) * ct + j) * bytes, format, tile.data());
          const py::ssize_t r0 = i * TILE, c0 = j * TILE;
          const py::ssize_t nr = std::min<py::ssize_t>(TILE, rows - r0), nc = std::min<py::ssize_t>(TILE, cols - c0);
          for (py::ssize_t r = 0; r < nr; ++r)
            std::memcpy(dst + (b * rows + r0 + r) * cols + c0, &tile[r * TILE], nc * sizeof(float));
        }
  }
  return out;
}

py::array_t<float> unpack_tiles(const ByteArray& data, int fmt) {
  const Format format = format_arg(fmt);
  const int bytes = tile_bytes(format);
  if (data.ndim() < 1 || data.shape(data.ndim() - 1) != bytes) {
    throw py::value_error("tiles of this format are " + std::to_string(bytes) + " bytes (the last dimension)");
  }
  const py::ssize_t n = data.size() / bytes;
  std::vector<py::ssize_t> shape = shape_of(data);
  shape.back() = TILE;
  shape.push_back(TILE);
  py::array_t<float> out(shape);
  const uint8_t* src = data.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (py::ssize_t t = 0; t < n; ++t) unpack_tile(src + t * bytes, format, dst + t * TILE_ELEMS);
  }
  return out;
}

py::array_t<float> copy_of(const FloatArray& x) {
  py::array_t<float> out(shape_of(x));
  std::copy(x.data(), x.data() + x.size(), out.mutable_data());
  return out;
}

py::array_t<float> dst_round_array(const FloatArray& x, int dst) {
  const DstFormat format = dst_arg(dst);
  py::array_t<float> out = copy_of(x);
  float* data = out.mutable_data();
  const int count = int_size(out.size());
  {
    py::gil_scoped_release release;
    dst_round_values(data, count, format);
  }
  return out;
}

py::array_t<float> eltwise(const FloatArray& a, const FloatArray& b, int op, int bcast, int dst) {
  const BinaryOp binop = checked<BinaryOp>(op, 3, "binary op");
  const Bcast bc = checked<Bcast>(bcast, 4, "broadcast");
  const DstFormat format = dst_arg(dst);
  const py::ssize_t n = tile_count(a, "a");
  if (tile_count(b, "b") != n) throw py::value_error("a and b must hold the same number of tiles");
  py::array_t<float> out(shape_of(a));
  const float* pa = a.data();
  const float* pb = b.data();
  float* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (py::ssize_t t = 0; t < n; ++t) {
      eltwise_tile(pa + t * TILE_ELEMS, pb + t * TILE_ELEMS, binop, bc, format, po + t * TILE_ELEMS);
    }
  }
  return out;
}

// The executor's binary_tiles on bf16 CB pages read in place (bf16 Dst): packed bf16 pages [n, 2048] -> tiles.
py::array_t<float> eltwise_bf16_pages_of(const ByteArray& a, const ByteArray& b, int op, int bcast) {
  const BinaryOp binop = checked<BinaryOp>(op, 3, "binary op");
  const Bcast bc = checked<Bcast>(bcast, 4, "broadcast");
  if (a.ndim() != 2 || a.shape(1) != 2048 || b.ndim() != 2 || b.shape(0) != a.shape(0) || b.shape(1) != 2048)
    throw py::value_error("a and b must be packed bf16 pages [n, 2048] of the same n");
  const py::ssize_t n = a.shape(0);
  py::array_t<float> out({n, static_cast<py::ssize_t>(TILE), static_cast<py::ssize_t>(TILE)});
  const uint8_t* pa = a.data();
  const uint8_t* pb = b.data();
  float* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (py::ssize_t t = 0; t < n; ++t) eltwise_bf16_pages(pa + t * 2048, pb + t * 2048, binop, bc, po + t * TILE_ELEMS);
  }
  return out;
}

py::array_t<float> reduce_max(const FloatArray& dst, const FloatArray& tiles, int dim, double scaler, int dst_format) {
  const ReduceDim rdim = checked<ReduceDim>(dim, 3, "reduce dim");
  const DstFormat format = dst_arg(dst_format);
  if (tile_count(dst, "dst") != 1) throw py::value_error("dst must be one [32, 32] tile");
  const py::ssize_t n = tile_count(tiles, "tiles");
  py::array_t<float> out = copy_of(dst);
  std::vector<const float*> pointers;
  for (py::ssize_t t = 0; t < n; ++t) pointers.push_back(tiles.data() + t * TILE_ELEMS);
  float* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    reduce_max_block(po, pointers.data(), int_size(n), rdim, static_cast<float>(scaler), format);
  }
  return out;
}

py::array_t<float> sfpu_table(const FloatArray& x, const FloatArray& table, int dst, const py::object& overflow) {
  const DstFormat format = dst_arg(dst);
  if (table.size() != 65536) throw py::value_error("the table holds 65536 values");
  ByteArray marks;
  if (!overflow.is_none()) {
    marks = ByteArray::ensure(overflow);
    if (!marks || marks.size() != 65536) throw py::value_error("the overflow marks are 65536 values");
  }
  py::array_t<float> out = copy_of(x);
  float* data = out.mutable_data();
  const int count = int_size(out.size());
  const float* values = table.data();
  const uint8_t* flags = overflow.is_none() ? nullptr : marks.data();
  {
    py::gil_scoped_release release;
    sfpu_table_tile(data, count, values, format, flags);
  }
  return out;
}

// The calling thread's Float16 overflow flag (numerics.h), cleared: whether a primitive called since the
// last take rounded a finite value to inf in a Float16 Dst.
bool take_f16_overflow() {
  const bool was = f16_overflow;
  f16_overflow = false;
  return was;
}

py::array_t<float> sfpu_scalar(const FloatArray& x, int fn, double param, int dst) {
  const ScalarFn sfn = checked<ScalarFn>(fn, 12, "SFPU scalar function");
  const DstFormat format = dst_arg(dst);
  py::array_t<float> out = copy_of(x);
  float* data = out.mutable_data();
  const int count = int_size(out.size());
  {
    py::gil_scoped_release release;
    sfpu_scalar_tile(data, count, sfn, static_cast<float>(param), format);  // float32(param): RNE
  }
  return out;
}

int row_element_bytes(Format format) {
  if (format != Format::BF16 && format != Format::F32) throw py::value_error("row-major rows are bf16 or f32");
  return format == Format::BF16 ? 2 : 4;
}

py::array_t<uint8_t> pack_rows(const FloatArray& values, int fmt) {
  const Format format = format_arg(fmt);
  const int element = row_element_bytes(format);
  if (values.ndim() < 1) throw py::value_error("values must have a last dimension");
  std::vector<py::ssize_t> shape = shape_of(values);
  shape.back() *= element;
  py::array_t<uint8_t> out(shape);
  const int count = int_size(values.size());
  const float* src = values.data();
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    pack_row_values(src, count, format, dst);
  }
  return out;
}

py::array_t<float> unpack_rows(const ByteArray& data, int fmt) {
  const Format format = format_arg(fmt);
  const int element = row_element_bytes(format);
  if (data.ndim() < 1 || data.shape(data.ndim() - 1) % element) {
    throw py::value_error("the last dimension must be a multiple of the element size");
  }
  std::vector<py::ssize_t> shape = shape_of(data);
  shape.back() /= element;
  py::array_t<float> out(shape);
  const int count = int_size(out.size());
  const uint8_t* src = data.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    unpack_row_values(src, count, format, dst);
  }
  return out;
}

}  // namespace

void register_numerics(py::module_& m) {
  py::dict formats;
  formats["f32"] = static_cast<int>(Format::F32);
  formats["bf16"] = static_cast<int>(Format::BF16);
  formats["f16"] = static_cast<int>(Format::F16);
  formats["bfp8_b"] = static_cast<int>(Format::BFP8);
  formats["bfp4_b"] = static_cast<int>(Format::BFP4);
  formats["i32"] = static_cast<int>(Format::I32);
  m.attr("FORMAT_CODES") = formats;
  py::dict dst_formats;
  dst_formats["bf16"] = static_cast<int>(DstFormat::BF16);
  dst_formats["f16"] = static_cast<int>(DstFormat::F16);
  m.attr("DST_FORMAT_CODES") = dst_formats;
  py::dict binary_ops;
  binary_ops["add"] = static_cast<int>(BinaryOp::ADD);
  binary_ops["sub"] = static_cast<int>(BinaryOp::SUB);
  binary_ops["mul"] = static_cast<int>(BinaryOp::MUL);
  m.attr("BINARY_OP_CODES") = binary_ops;
  py::dict bcasts;
  bcasts["none"] = static_cast<int>(Bcast::NONE);
  bcasts["row"] = static_cast<int>(Bcast::ROW);
  bcasts["col"] = static_cast<int>(Bcast::COL);
  bcasts["scalar"] = static_cast<int>(Bcast::SCALAR);
  m.attr("BCAST_CODES") = bcasts;
  py::dict dims;
  dims["row"] = static_cast<int>(ReduceDim::ROW);
  dims["col"] = static_cast<int>(ReduceDim::COL);
  dims["scalar"] = static_cast<int>(ReduceDim::SCALAR);
  m.attr("REDUCE_DIM_CODES") = dims;
  py::dict scalar_fns;
  const char* names[] = {"add_scalar", "mul_scalar", "sub_from_scalar", "max_scalar", "where_nez", "where_eqz",
                         "eq_scalar", "ne_scalar", "lt_scalar", "le_scalar", "gt_scalar", "ge_scalar"};
  for (int i = 0; i < 12; ++i) scalar_fns[names[i]] = i;  // ScalarFn's order
  m.attr("SFPU_SCALAR_CODES") = scalar_fns;

  m.def("tile_bytes", [](int fmt) { return tile_bytes(format_arg(fmt)); }, py::arg("fmt"),
        "Bytes of one packed tile of the format.");
  m.def("pack_tiles", &pack_tiles, py::arg("tiles"), py::arg("fmt"),
        "float32 tiles [..., 32, 32] -> uint8 [..., tile_bytes] in the device's face order (formats.pack_tiles).");
  m.def("pack_matrix", &pack_matrix, py::arg("values"), py::arg("fmt"),
        "float32 [batch, rows, cols] -> uint8 tile pages, zero-padded to whole tiles (formats.tilize + pack_tiles).");
  m.def("unpack_matrix", &unpack_matrix, py::arg("data"), py::arg("fmt"), py::arg("batch"), py::arg("rows"),
        py::arg("cols"), "uint8 tile pages -> float32 [batch, rows, cols] (unpack_tiles + formats.untilize, cropped).");
  m.def("unpack_tiles", &unpack_tiles, py::arg("data"), py::arg("fmt"),
        "uint8 [..., tile_bytes] -> float32 tiles [..., 32, 32] (i32: the float32 of each integer).");
  m.def("dst_round", &dst_round_array, py::arg("x"), py::arg("dst_format"),
        "float32 values rounded to the Dst format (numerics.dst_round).");
  m.def("eltwise_bf16_pages", &eltwise_bf16_pages_of, py::arg("a"), py::arg("b"), py::arg("op"), py::arg("bcast"),
        "eltwise on packed bf16 pages [n, 2048] read in place, into a bf16 Dst (the executor's binary_tiles path).");
  m.def("eltwise", &eltwise, py::arg("a"), py::arg("b"), py::arg("op"), py::arg("bcast"), py::arg("dst_format"),
        "Tiles a op b [..., 32, 32], b broadcast inside each tile (numerics.eltwise_binary).");
  m.def("reduce_max", &reduce_max, py::arg("dst"), py::arg("tiles"), py::arg("dim"), py::arg("scaler"),
        py::arg("dst_format"), "A Dst tile [32, 32] after the max-reduce of tiles [n, 32, 32] (numerics.reduce_block).");
  m.def("sfpu_table", &sfpu_table, py::arg("x"), py::arg("table"), py::arg("dst_format"),
        py::arg("overflow") = py::none(),
        "x looked up in a 65536-entry table by its Dst-format bits (numerics.sfpu_unary, table functions); "
        "overflow: the table's Float16 overflow marks (numerics.sfpu_table_overflow).");
  m.def("take_f16_overflow", &take_f16_overflow,
        "Whether a primitive called on this thread since the last call rounded a finite value to inf in a "
        "Float16 Dst (numerics.Float16Overflow); clears the flag.");
  m.def("sfpu_scalar", &sfpu_scalar, py::arg("x"), py::arg("fn"), py::arg("param"), py::arg("dst_format"),
        "A *_scalar SFPU function of x (numerics.sfpu_unary).");
  m.def("pack_rows", &pack_rows, py::arg("values"), py::arg("fmt"),
        "float32 values [..., n] -> row-major bytes (bf16 RNE or f32; interpreter.pack_row_values).");
  m.def("unpack_rows", &unpack_rows, py::arg("data"), py::arg("fmt"),
        "row-major bytes -> float32 values (bf16 exact, f32 rounded to bf16; interpreter.unpack_rows).");
}

}  // namespace ttc
