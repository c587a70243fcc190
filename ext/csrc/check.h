// FR_CHECK: TORCH_CHECK with a message built without std::ostream.
//
// Why: c10::str formats numbers through std::ostream. On a toolchain where the
// extension is compiled by the system g++ against a torch built with
// gcc-toolset (seen on the project's GPU image: Ubuntu g++ 13.3 vs torch 2.11
// built by RHEL gcc-toolset-13), the ostream numeric facets in the extension
// crash (SIGSEGV) while formatting an int64 into an error message, so a bad
// argument killed the interpreter instead of raising RuntimeError. Integers
// go through std::to_string and doubles through snprintf here, which do not
// touch the stream locale machinery.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <type_traits>

namespace fastrader {

inline void msg_append(std::string& s, const char* x) { s += x; }
inline void msg_append(std::string& s, const std::string& x) { s += x; }
inline void msg_append(std::string& s, c10::ScalarType t) { s += c10::toString(t); }
inline void msg_append(std::string& s, const c10::Device& d) { s += d.str(); }
inline void msg_append(std::string& s, c10::IntArrayRef sizes) {
  s += "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  s += "]";
}
template <typename T>
std::enable_if_t<std::is_integral_v<T>> msg_append(std::string& s, T x) {
  s += std::to_string(x);
}
template <typename T>
std::enable_if_t<std::is_floating_point_v<T>> msg_append(std::string& s, T x) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));
  s += buf;
}

template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_append(s, args), ...);
  return s;
}

}  // namespace fastrader

#define FR_CHECK(cond, ...) TORCH_CHECK((cond), ::fastrader::msg(__VA_ARGS__))
