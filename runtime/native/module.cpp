// The `ttc.runtime._native` extension module: the native execution core and the primitives it is built
// from (exposed for the property tests that compare them with the Python emulator).
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace ttc {
void register_numerics(py::module_& m);
void register_matmul(py::module_& m);
void register_program(py::module_& m);
void register_host(py::module_& m);
}  // namespace ttc

PYBIND11_MODULE(_native, m) {
  m.doc() = "ttc's native execution core: whole kernel programs of the emulated Grayskull, bit-exact";
  ttc::register_numerics(m);
  ttc::register_matmul(m);
  ttc::register_program(m);
  ttc::register_host(m);
}
