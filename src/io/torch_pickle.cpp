#include "sortedllama/io/torch_pickle.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace sl {

namespace {
// The storage classes a tensor of weights may name, and what their bytes hold.
struct StorageType {
  const char* global;
  torch::Dtype dtype;
};
const StorageType kStorageTypes[] = {{"torch.FloatStorage", torch::kFloat32},
                                     {"torch.HalfStorage", torch::kFloat16},
                                     {"torch.BFloat16Storage", torch::kBFloat16},
                                     {"torch.DoubleStorage", torch::kFloat64}};
const char* const kCallables[] = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                  "torch._utils._rebuild_parameter"};

// What the unpickler builds. Only these kinds exist: nothing else can be constructed.
struct Value {
  enum Kind { kNone, kBool, kInt, kFloat, kStr, kTuple, kList, kDict, kGlobal, kStorage, kTensor } kind;
  int64_t i = 0;              // Bool, Int; Storage: element count; Tensor: storage offset
  double f = 0;               // Float
  std::string s;              // Str; Global: "module.name"; Storage: its key
  std::vector<Value*> items;  // Tuple, List; Dict: key, value, key, value, ...
  bool ordered = false;       // Dict made by OrderedDict(): the only kind BUILD may set attributes on
  std::vector<int64_t> size, stride;    // Tensor
  const Value* storage = nullptr;       // Tensor
  const StorageType* type = nullptr;    // Global naming a storage class; Storage
};

const char* kind_name(Value::Kind k) {
  static const char* names[] = {"None", "bool",   "int",    "float",   "str",   "tuple",
                                "list", "dict", "global", "storage", "tensor"};
  return names[k];
}

bool mul_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool add_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }

std::string dims_str(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

// Runs data.pkl as a stack machine over the opcodes torch.save emits (protocol 2). Calls are
// never made: REDUCE of an allowed global builds the matching Value.
class Unpickler {
 public:
  Unpickler(std::string where, const ZipEntry& pkl) : where_(std::move(where)), data_(pkl.data), size_(pkl.size) {}

  Value* load() {
    for (;;) {
      op_at_ = pos_;
      const uint8_t op = u(1);
      switch (op) {
        case 0x80: {  // PROTO
          const uint64_t v = u(1);
          if (v < 2 || v > 5) fail("pickle protocol " + std::to_string(v) + " is not one torch.save writes");
          break;
        }
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '.': {  // STOP
          Value* result = pop();
          if (!stack_.empty() || !marks_.empty()) fail("values left on the stack at STOP");
          return result;
        }
        case 'N': push(make(Value::kNone)); break;
        case 0x88: case 0x89: {  // NEWTRUE, NEWFALSE
          Value* v = make(Value::kBool);
          v->i = op == 0x88;
          push(v);
          break;
        }
        case 'J': push(integer((int32_t)u(4))); break;  // BININT
        case 'K': push(integer((int64_t)u(1))); break;  // BININT1
        case 'M': push(integer((int64_t)u(2))); break;  // BININT2
        case 0x8a: {  // LONG1: n bytes, little-endian two's complement
          const uint64_t n = u(1);
          if (n > 8) fail("integer of " + std::to_string(n) + " bytes is too large");
          uint64_t bits = n ? u(n) : 0;
          if (n > 0 && n < 8 && (bits >> (8 * n - 1)) & 1) bits |= ~0ull << (8 * n);
          push(integer((int64_t)bits));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian IEEE double
          const uint8_t* p = take(8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];
          Value* v = make(Value::kFloat);
          std::memcpy(&v->f, &bits, 8);
          push(v);
          break;
        }
        case 'X': push(string(u(4))); break;   // BINUNICODE
        case 0x8c: push(string(u(1))); break;  // SHORT_BINUNICODE
        case ')': push(make(Value::kTuple)); break;  // EMPTY_TUPLE
        case 't': push(tuple(pop_mark())); break;    // TUPLE
        case 0x85: case 0x86: case 0x87: {           // TUPLE1..3
          const size_t n = op - 0x84;
          if (stack_.size() < n + floor()) fail("stack underflow");
          std::vector<Value*> items(stack_.end() - n, stack_.end());
          stack_.resize(stack_.size() - n);
          push(tuple(std::move(items)));
          break;
        }
        case ']': push(make(Value::kList)); break;  // EMPTY_LIST
        case 'a': {                                 // APPEND
          Value* v = pop();
          expect(top(), Value::kList, "APPEND target")->items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<Value*> items = pop_mark();
          Value* list = expect(top(), Value::kList, "APPENDS target");
          list->items.insert(list->items.end(), items.begin(), items.end());
          break;
        }
        case '}': push(make(Value::kDict)); break;  // EMPTY_DICT
        case 's': {                                 // SETITEM
          Value* v = pop();
          Value* k = pop();
          Value* dict = expect(top(), Value::kDict, "SETITEM target");
          dict->items.push_back(k);
          dict->items.push_back(v);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<Value*> items = pop_mark();
          if (items.size() % 2) fail("SETITEMS with an odd number of values");
          Value* dict = expect(top(), Value::kDict, "SETITEMS target");
          dict->items.insert(dict->items.end(), items.begin(), items.end());
          break;
        }
        case 'q': memo_[u(1)] = top(); break;  // BINPUT
        case 'r': memo_[u(4)] = top(); break;  // LONG_BINPUT
        case 'h': push(memo(u(1))); break;     // BINGET
        case 'j': push(memo(u(4))); break;     // LONG_BINGET
        case 'c': push(global()); break;       // GLOBAL
        case 'R': {                            // REDUCE
          Value* args = expect(pop(), Value::kTuple, "REDUCE arguments");
          push(reduce(expect(pop(), Value::kGlobal, "REDUCE callable"), args->items));
          break;
        }
        case 'Q': push(storage(expect(pop(), Value::kTuple, "persistent id"))); break;  // BINPERSID
        case 'b': {  // BUILD: an OrderedDict's attributes (a state dict's _metadata versions), unused
          Value* state = pop();
          if (top()->kind != Value::kDict || !top()->ordered || state->kind != Value::kDict)
            fail("BUILD of a " + std::string(kind_name(top()->kind)) + " (only an OrderedDict's attributes are read)");
          break;
        }
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          fail(std::string("unsupported pickle opcode ") + hex + " (only what torch.save writes for a dict of tensors is read)");
        }
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    throw std::runtime_error(where_ + " offset " + std::to_string(op_at_) + ": " + msg);
  }

  const uint8_t* take(uint64_t n) {
    if (n > size_ - pos_) fail("truncated pickle (ends without STOP)");
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint64_t u(uint64_t n) {  // little-endian unsigned
    const uint8_t* p = take(n);
    uint64_t v = 0;
    for (uint64_t i = n; i-- > 0;) v = (v << 8) | p[i];
    return v;
  }

  Value* make(Value::Kind k) {
    arena_.push_back(std::make_unique<Value>());
    arena_.back()->kind = k;
    return arena_.back().get();
  }
  Value* integer(int64_t i) {
    Value* v = make(Value::kInt);
    v->i = i;
    return v;
  }
  Value* string(uint64_t n) {
    Value* v = make(Value::kStr);
    v->s.assign(reinterpret_cast<const char*>(take(n)), n);
    return v;
  }
  Value* tuple(std::vector<Value*> items) {
    Value* v = make(Value::kTuple);
    v->items = std::move(items);
    return v;
  }

  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Value* v) { stack_.push_back(v); }
  Value* top() {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  Value* pop() {
    Value* v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    std::vector<Value*> items(stack_.begin() + (std::ptrdiff_t)marks_.back(), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value* memo(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail("memo entry " + std::to_string(key) + " was never stored");
    return it->second;
  }
  Value* expect(Value* v, Value::Kind k, const char* what) {
    if (v->kind != k) fail(std::string(what) + " is a " + kind_name(v->kind) + ", not a " + kind_name(k));
    return v;
  }

  Value* global() {
    auto line = [&] {
      std::string s;
      for (char c; (c = (char)*take(1)) != '\n';) s += c;
      return s;
    };
    const std::string module = line();
    Value* v = make(Value::kGlobal);
    v->s = module + "." + line();
    for (const auto& t : kStorageTypes)
      if (v->s == t.global) v->type = &t;
    bool callable = false;
    for (const char* c : kCallables) callable |= v->s == c;
    if (!v->type && !callable)
      fail("global " + v->s + " is not allowed: a file of weights needs only OrderedDict, torch's tensor rebuild "
           "functions and float storage types (this pickle may try to run code)");
    return v;
  }

  // ('storage', storage class, key, location, element count): the bytes are ARCHIVE/data/<key>.
  Value* storage(const Value* pid) {
    const auto& f = pid->items;
    if (f.size() != 5 || f[0]->kind != Value::kStr || f[0]->s != "storage" || f[1]->kind != Value::kGlobal ||
        !f[1]->type || f[2]->kind != Value::kStr || f[3]->kind != Value::kStr || f[4]->kind != Value::kInt)
      fail("persistent id is not ('storage', <float storage type>, key, location, size)");
    Value* v = make(Value::kStorage);
    v->type = f[1]->type;
    v->s = f[2]->s;
    v->i = f[4]->i;
    return v;
  }

  Value* reduce(const Value* fn, const std::vector<Value*>& args) {
    auto want = [&](size_t i, Value::Kind k, const char* what) {
      if (i >= args.size() || args[i]->kind != k)
        fail(fn->s + ": argument " + std::to_string(i) + " (" + what + ") is not a " + kind_name(k));
      return args[i];
    };
    auto no_hooks = [&](size_t i) {
      if (!want(i, Value::kDict, "backward hooks")->items.empty()) fail(fn->s + ": tensors with backward hooks are not read");
    };
    if (fn->s == "collections.OrderedDict") {
      if (!args.empty()) fail("OrderedDict called with arguments");
      Value* d = make(Value::kDict);
      d->ordered = true;
      return d;
    }
    if (fn->s == "torch._utils._rebuild_tensor_v2") {
      // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (args.size() != 6 && args.size() != 7) fail(fn->s + " takes 6 or 7 arguments, got " + std::to_string(args.size()));
      Value* t = make(Value::kTensor);
      t->storage = want(0, Value::kStorage, "storage");
      t->i = want(1, Value::kInt, "storage offset")->i;
      for (int which = 2; which <= 3; ++which)
        for (const Value* d : want(which, Value::kTuple, which == 2 ? "size" : "stride")->items) {
          if (d->kind != Value::kInt) fail(fn->s + ": size or stride holds a " + std::string(kind_name(d->kind)));
          (which == 2 ? t->size : t->stride).push_back(d->i);
        }
      want(4, Value::kBool, "requires_grad");
      no_hooks(5);
      if (args.size() == 7 && !want(6, Value::kDict, "metadata")->items.empty())
        fail(fn->s + ": tensor metadata (conjugate/negative bits) is not read");
      return t;
    }
    if (fn->s == "torch._utils._rebuild_parameter") {  // (tensor, requires_grad, backward_hooks)
      if (args.size() != 3) fail(fn->s + " takes 3 arguments, got " + std::to_string(args.size()));
      Value* t = want(0, Value::kTensor, "data");
      want(1, Value::kBool, "requires_grad");
      no_hooks(2);
      return t;
    }
    fail(fn->s + " cannot be called");
  }

  const std::string where_;
  const uint8_t* data_;
  uint64_t size_, pos_ = 0, op_at_ = 0;
  std::vector<std::unique_ptr<Value>> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;  // stack heights at each open MARK
  std::map<uint64_t, Value*> memo_;
};
}  // namespace

TorchFile::TorchFile(const std::string& path) : zip_(path) {
  // ARCHIVE is the saved file's stem ("pytorch_model", "consolidated", "archive"): find data.pkl.
  std::string pkl_name;
  for (const auto& entry : zip_.entries()) {
    const std::string& n = entry.first;
    const size_t slash = n.find('/');
    if (slash != std::string::npos && n.compare(slash, std::string::npos, "/data.pkl") == 0) {
      if (!pkl_name.empty()) throw std::runtime_error(path + ": holds both " + pkl_name + " and " + n);
      pkl_name = n;
    }
  }
  if (pkl_name.empty()) throw std::runtime_error(path + ": zip archive without ARCHIVE/data.pkl: not a torch.save file");
  const std::string prefix = pkl_name.substr(0, pkl_name.size() - 8);  // "ARCHIVE/"
  if (const ZipEntry* order = zip_.find(prefix + "byteorder"))
    if (std::string(reinterpret_cast<const char*>(order->data), order->size) != "little")
      throw std::runtime_error(path + ": storages are not little-endian (" + prefix + "byteorder)");

  const std::string where = path + ": " + pkl_name;
  Unpickler unpickler(where, *zip_.find(pkl_name));
  const Value* root = unpickler.load();
  if (root->kind != Value::kDict)
    throw std::runtime_error(where + ": holds a " + std::string(kind_name(root->kind)) + ", not a dict of tensors");
  for (size_t k = 0; k < root->items.size(); k += 2) {
    const Value* key = root->items[k];
    const Value* t = root->items[k + 1];
    if (key->kind != Value::kStr) throw std::runtime_error(where + ": a key is a " + std::string(kind_name(key->kind)) + ", not a tensor name");
    const std::string& name = key->s;
    auto bad = [&](const std::string& msg) { return std::runtime_error(path + ": " + msg + " (tensor " + name + ")"); };
    if (t->kind != Value::kTensor) throw bad(std::string("value is a ") + kind_name(t->kind) + ", not a tensor");
    const Value& st = *t->storage;
    const int64_t esize = (int64_t)c10::elementSize(st.type->dtype);
    const std::string key_name = prefix + "data/" + st.s;
    const ZipEntry* entry = zip_.find(key_name);
    if (!entry) throw bad("its storage " + key_name + " is missing");
    int64_t bytes = 0;
    if (st.i < 0 || !mul_ok(st.i, esize, &bytes) || (uint64_t)bytes != entry->size)
      throw bad("storage " + key_name + " holds " + std::to_string(entry->size) + " bytes, but the pickle declares " +
                std::to_string(st.i) + " elements of " + std::to_string(esize) + " bytes");
    if (t->size.size() != t->stride.size()) throw bad("size and stride have different lengths");
    // The last element the view touches must lie inside the storage.
    int64_t numel = 1, last = t->i;
    bool ok = t->i >= 0;
    for (size_t d = 0; d < t->size.size() && ok; ++d) {
      int64_t reach = 0;
      ok = t->size[d] >= 0 && t->stride[d] >= 0 && mul_ok(numel, t->size[d], &numel) &&
           (t->size[d] == 0 || (mul_ok(t->size[d] - 1, t->stride[d], &reach) && add_ok(last, reach, &last)));
    }
    if (!ok) throw bad("size " + dims_str(t->size) + ", stride " + dims_str(t->stride) + " and offset " +
                       std::to_string(t->i) + " are impossible");
    if (numel > 0 && last >= st.i)
      throw bad("size " + dims_str(t->size) + " with stride " + dims_str(t->stride) + " at offset " + std::to_string(t->i) +
                " reaches element " + std::to_string(last) + ", past its storage's " + std::to_string(st.i));
    if (!tensors_.emplace(name, Stored{st.type->dtype, t->size, t->stride, t->i, entry}).second)
      throw bad("appears twice");
    names_.push_back(name);
  }
}

torch::Tensor TorchFile::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error(path() + ": missing tensor " + name);
  const Stored& t = it->second;
  const int64_t esize = (int64_t)c10::elementSize(t.dtype);
  auto* bytes = const_cast<uint8_t*>(t.storage->data);  // read-only mapping: callers copy from it
  if (reinterpret_cast<uintptr_t>(bytes) % esize == 0)
    return torch::from_blob(bytes + t.offset * esize, t.size, t.stride, torch::dtype(t.dtype));
  // torch aligns storages to 64 bytes; another writer may not: view a copy instead.
  torch::Tensor copy = torch::empty({(int64_t)t.storage->size / esize}, torch::dtype(t.dtype));
  std::memcpy(copy.data_ptr(), bytes, t.storage->size);
  return copy.as_strided(t.size, t.stride, t.offset);
}

}  // namespace sl
