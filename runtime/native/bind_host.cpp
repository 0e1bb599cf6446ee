// The host side of a run in one call each: a host tensor packed straight into the tile pages of a live
// interleaved buffer (layout.tensor_to_pages, then device.Memory.write_buffer), and the pages of one read
// straight into a host tensor (Memory.read_buffer, then layout.pages_to_tensor). The same bytes as those
// Python paths, poison marks included (runtime/native/DESIGN.md, "Poisoned memory"), without the packed
// copy in between; runtime/executor.py calls them for the float tile formats of the native packers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "numerics.h"

namespace py = pybind11;

namespace ttc {

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

constexpr int64_t kPoisonBlock = 256;  // device.py POISON_BLOCK
constexpr uint8_t kPoison = 0xFF;

// A memory's bytes [banks, capacity] and its poison marks [banks, blocks] (marks may be absent).
struct Banks {
  uint8_t* data = nullptr;
  int64_t banks = 0, capacity = 0;
  int64_t stride = 0;  // bytes from one bank's first byte to the next's (capacity plus device.py's skew)
  uint8_t* marks = nullptr;
  int64_t blocks = 0;
};

Banks banks_of(const py::array& data, const py::handle& marks) {
  Banks m;
  if (data.ndim() != 2 || !py::isinstance<py::array_t<uint8_t>>(data) || data.strides(1) != 1 ||
      data.strides(0) < data.shape(1) || !data.writeable())
    throw std::invalid_argument("a memory must be a writable uint8 array [banks, capacity] of contiguous banks");
  m.data = static_cast<uint8_t*>(const_cast<void*>(data.data()));
  m.banks = data.shape(0);
  m.capacity = data.shape(1);
  m.stride = data.strides(0);
  if (!marks.is_none()) {
    auto a = py::array::ensure(marks);
    if (!a || a.ndim() != 2 || !py::isinstance<py::array_t<uint8_t>>(a) || !(a.flags() & py::array::c_style) ||
        !a.writeable() || a.shape(0) != m.banks || a.shape(1) * kPoisonBlock > m.capacity)
      throw std::invalid_argument("poison marks must be a writable C-contiguous uint8 array [banks, blocks]");
    m.marks = static_cast<uint8_t*>(a.mutable_data());
    m.blocks = a.shape(1);
  }
  return m;
}

// Memory._materialize(start, end): every marked block meeting bytes [start, end) of a bank is filled with
// POISON and unmarked.
void materialize(const Banks& m, int64_t start, int64_t end) {
  if (!m.marks) return;
  const int64_t lo = start / kPoisonBlock, hi = std::min(m.blocks, (end + kPoisonBlock - 1) / kPoisonBlock);
  for (int64_t b = 0; b < m.banks; ++b)
    for (int64_t k = lo; k < hi; ++k) {
      uint8_t& mark = m.marks[b * m.blocks + k];
      if (mark) {
        std::memset(m.data + b * m.stride + k * kPoisonBlock, kPoison, kPoisonBlock);
        mark = 0;
      }
    }
}

// The interleaved buffer of `pages` tile pages at `address`: the rows it spans in every bank (checked inside the
// memory).
int64_t region_rows(const Banks& m, int64_t address, int64_t pages, int bytes) {
  if (address < 0 || pages < 0) throw std::invalid_argument("a buffer at a negative address or of negative pages");
  const int64_t rows = (pages + m.banks - 1) / m.banks;
  if (address + rows * bytes > m.capacity) throw std::invalid_argument("a buffer outside its memory");
  return rows;
}

// tensor_to_pages (tile layout, zero padding) then Memory.write_buffer of a live interleaved buffer whose pages
// are tiles of `fmt`: float32 matrices [batch, rows, cols] -> the buffer's pages in place.
// The interleaved tile pages of [batch, rows, cols] float matrices in page order: `visit(page bytes, the host
// tile's first element, valid rows, valid columns)` (page p in bank p % banks, slot p / banks).
template <typename Host, typename Visit>
void for_each_tile(const Banks& m, int64_t address, int bytes, int64_t batch, int64_t rows, int64_t cols,
                   Visit visit, Host* host) {
  const int64_t rt = (rows + TILE - 1) / TILE, ct = (cols + TILE - 1) / TILE;
  int64_t page = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < rt; ++i)
      for (int64_t j = 0; j < ct; ++j, ++page) {
        const int64_t r0 = i * TILE, c0 = j * TILE;
        visit(m.data + (page % m.banks) * m.stride + address + (page / m.banks) * bytes,
              host + (b * rows + r0) * cols + c0, std::min<int64_t>(TILE, rows - r0), std::min<int64_t>(TILE, cols - c0));
      }
}

void write_matrix(const FloatArray& values, int fmt, py::array data, py::handle marks, int64_t address,
                  int64_t num_pages) {
  if (fmt < 0 || fmt > 5) throw py::value_error("unknown tile format");
  const Format format = static_cast<Format>(fmt);
  if (values.ndim() != 3) throw py::value_error("values must be [batch, rows, cols]");
  const int64_t batch = values.shape(0), rows = values.shape(1), cols = values.shape(2);
  const int64_t rt = (rows + TILE - 1) / TILE, ct = (cols + TILE - 1) / TILE;
  if (batch * rt * ct != num_pages) throw py::value_error("the matrices do not fill the buffer's pages");
  const int bytes = tile_bytes(format);
  Banks m = banks_of(data, marks);
  const int64_t region = region_rows(m, address, num_pages, bytes);
  const float* src = values.data();
  py::gil_scoped_release release;
  if (m.marks) {  // the whole rows of pages are written in every bank: no fill needed there
    const int64_t whole_end = address + num_pages / m.banks * bytes;
    const int64_t first = (address + kPoisonBlock - 1) / kPoisonBlock, last = std::min(m.blocks, whole_end / kPoisonBlock);
    for (int64_t b = 0; b < m.banks && first < last; ++b) std::memset(m.marks + b * m.blocks + first, 0, last - first);
    materialize(m, address, address + region * bytes);
  }
  std::vector<float> tile(TILE_ELEMS);
  for_each_tile(m, address, bytes, batch, rows, cols, [&](uint8_t* page, const float* host, int64_t nr, int64_t nc) {
    if (nr < TILE || nc < TILE) std::fill(tile.begin(), tile.end(), 0.0f);
    for (int64_t r = 0; r < nr; ++r) std::memcpy(&tile[r * TILE], host + r * cols, nc * sizeof(float));
    pack_tile(tile.data(), format, page);
  }, src);
}

// Memory.read_buffer of a live interleaved buffer of `fmt` tiles, then pages_to_tensor's unpack and untilize:
// -> float32 [batch, rows, cols] (cropped).
py::array_t<float> read_matrix(py::array data, py::handle marks, int64_t address, int64_t num_pages, int fmt,
                               int64_t batch, int64_t rows, int64_t cols) {
  if (fmt < 0 || fmt > 5) throw py::value_error("unknown tile format");
  const Format format = static_cast<Format>(fmt);
  const int64_t rt = (rows + TILE - 1) / TILE, ct = (cols + TILE - 1) / TILE;
  if (batch < 0 || rows < 0 || cols < 0 || batch * rt * ct != num_pages)
    throw py::value_error("the matrices do not match the buffer's pages");
  const int bytes = tile_bytes(format);
  Banks m = banks_of(data, marks);
  const int64_t region = region_rows(m, address, num_pages, bytes);
  py::array_t<float> out({batch, rows, cols});
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  materialize(m, address, address + region * bytes);
  std::vector<float> tile(TILE_ELEMS);
  for_each_tile(m, address, bytes, batch, rows, cols, [&](uint8_t* page, float* host, int64_t nr, int64_t nc) {
    unpack_tile(page, format, tile.data());
    for (int64_t r = 0; r < nr; ++r) std::memcpy(host + r * cols, &tile[r * TILE], nc * sizeof(float));
  }, dst);
  return out;
}

// Memory.poison's bytes and marks for [start, end) of every bank (its `touch` stays in Python): the partial
// blocks at the ends filled with POISON, the whole blocks between them marked. Returns whether it marked any.
bool poison(py::array data, py::array marks, int64_t start, int64_t end) {
  Banks m = banks_of(data, marks);
  if (start < 0 || end < start || end > m.capacity) throw std::invalid_argument("a poisoned range outside its memory");
  const int64_t first = (start + kPoisonBlock - 1) / kPoisonBlock, last = end / kPoisonBlock;  // whole blocks
  if (first >= last) {
    for (int64_t b = 0; b < m.banks; ++b) std::memset(m.data + b * m.stride + start, kPoison, end - start);
    return false;
  }
  if (last > m.blocks) throw std::invalid_argument("poison marks shorter than the memory");
  const int64_t head = first * kPoisonBlock - start, tail = end - last * kPoisonBlock;
  for (int64_t b = 0; b < m.banks; ++b) {
    uint8_t* bank = m.data + b * m.stride;
    if (head) std::memset(bank + start, kPoison, head);
    if (tail) std::memset(bank + last * kPoisonBlock, kPoison, tail);
    std::memset(m.marks + b * m.blocks + first, 1, last - first);
  }
  return true;
}

// The im2col matrix of NCHW images (ttir.im2col_rows, the host's write_buffer {window}): row
// (n * OH + oh) * OW + ow holds window (oh, ow) of image n, columns ordered (kernel row, kernel column, channel),
// +0 where the window lies in the padding. window: kernel (2), strides (2), pads [top, left, bottom, right],
// dilations (2).
py::array_t<float> im2col(FloatArray x, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ints) {
  if (x.ndim() != 4 || ints.ndim() != 1 || ints.shape(0) != 10)
    throw std::invalid_argument("im2col takes NCHW images and 10 window ints");
  const int64_t* window = ints.data();
  const int64_t n = x.shape(0), c = x.shape(1), h = x.shape(2), w = x.shape(3);
  const int64_t kh = window[0], kw = window[1], sh = window[2], sw = window[3];
  const int64_t pt = window[4], pl = window[5], pb = window[6], pr = window[7], dh = window[8], dw = window[9];
  if (std::min({kh, kw, sh, sw, dh, dw}) < 1 || std::min({pt, pl, pb, pr}) < 0)
    throw std::invalid_argument("an im2col window needs kernel, strides and dilations >= 1 and pads >= 0");
  const int64_t span_h = h + pt + pb - ((kh - 1) * dh + 1), span_w = w + pl + pr - ((kw - 1) * dw + 1);
  if (span_h < 0 || span_w < 0) throw std::invalid_argument("the im2col window has no position in the images");
  const int64_t oh = span_h / sh + 1, ow = span_w / sw + 1, k = kh * kw * c;
  py::array_t<float> out({n * oh * ow, k});
  const float* src = x.data();
  float* to = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j, to += k)
          for (int64_t a = 0; a < kh; ++a) {
            const int64_t y = i * sh - pt + a * dh;
            for (int64_t e = 0; e < kw; ++e) {
              const int64_t z = j * sw - pl + e * dw;
              float* cell = to + (a * kw + e) * c;
              if (y < 0 || y >= h || z < 0 || z >= w) {
                std::fill(cell, cell + c, 0.0f);
                continue;
              }
              const float* pixel = src + (b * c * h + y) * w + z;
              for (int64_t ch = 0; ch < c; ++ch) cell[ch] = pixel[ch * h * w];
            }
          }
  }
  return out;
}

}  // namespace

// `poison` for the native run plan (program.cpp), which poisons a run's fresh buffers between its programs.
bool poison_range(py::array data, py::array marks, int64_t start, int64_t end) { return poison(data, marks, start, end); }

void register_host(py::module_& m) {
  m.def("poison", &poison, py::arg("data"), py::arg("marks"), py::arg("start"), py::arg("end"),
        "Memory.poison's bytes and marks for bytes [start, end) of every bank; returns whether blocks were marked.");
  m.def("write_matrix", &write_matrix, py::arg("values"), py::arg("fmt"), py::arg("data"), py::arg("marks"),
        py::arg("address"), py::arg("num_pages"),
        "float32 [batch, rows, cols] -> the tile pages of the live interleaved buffer at `address` of a memory "
        "(bytes [banks, capacity], poison marks or None), as tensor_to_pages then Memory.write_buffer.");
  m.def("im2col", &im2col, py::arg("x"), py::arg("window"),
        "The im2col matrix [N*OH*OW, KH*KW*C] of float32 NCHW images by a window (kernel, strides, pads, "
        "dilations), as ttir.im2col_rows.");
  m.def("read_matrix", &read_matrix, py::arg("data"), py::arg("marks"), py::arg("address"), py::arg("num_pages"),
        py::arg("fmt"), py::arg("batch"), py::arg("rows"), py::arg("cols"),
        "The tile pages of the live interleaved buffer at `address` -> float32 [batch, rows, cols], as "
        "Memory.read_buffer then pages_to_tensor.");
}

}  // namespace ttc
