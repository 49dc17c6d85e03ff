// SHA-256 (FIPS 180-4) checksums of data files, as lowercase hex.
#pragma once
#include <string>

namespace sl {

std::string sha256_hex(const std::string& bytes);
std::string sha256_file(const std::string& path);  // throws naming the file when it cannot be read

}  // namespace sl
