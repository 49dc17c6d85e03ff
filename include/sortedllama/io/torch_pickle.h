// torch.save files (pytorch_model.bin, Meta's consolidated.NN.pth) read without running their
// pickle. The file is a zip (io/zip.h) of ARCHIVE/data.pkl, one ARCHIVE/data/<key> per storage and
// ARCHIVE/version; data.pkl describes a dict of tensors as calls to torch functions.
//
// Like torch.load(weights_only=True), a restricted unpickler knows only the protocol-2 opcodes and
// the globals such a dict needs (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and
// _rebuild_parameter, torch.{Float,Half,BFloat16,Double}Storage) and calls nothing: any other
// global, opcode or object (os.system, a __reduce__ payload) is an error naming the file.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sortedllama/io/zip.h"

namespace sl {

class TorchFile {
 public:
  // Maps the file, parses data.pkl and checks every tensor against its storage; throws
  // "<path>: <problem>" naming the tensor or the pickle offset.
  explicit TorchFile(const std::string& path);

  const std::vector<std::string>& names() const { return names_; }  // in the file's order
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  // The tensor as stored (its dtype, offset and strides), viewing the read-only mapping, so only
  // valid while this object lives; throws naming the file and the tensor if absent.
  torch::Tensor tensor(const std::string& name) const;
  const std::string& path() const { return zip_.path(); }

 private:
  struct Stored {
    torch::Dtype dtype;
    std::vector<int64_t> size, stride;
    int64_t offset;           // in elements
    const ZipEntry* storage;  // validated to hold the whole view
  };
  ZipFile zip_;
  std::map<std::string, Stored> tensors_;
  std::vector<std::string> names_;
};

}  // namespace sl
