// squeezeedge deploy runner: load a built model.so with the TVM runtime (no Python), run it once on
// raw input files, write the first output as raw float32, print the wall time of each run.
//
//   run_model [--device cpu|cuda] [--threads N] [--lengths L1,L2,...] LIB.so OUT.bin REPEAT NAME:DTYPE:D0xD1:FILE [...]
//             [-- NAME:DTYPE:D0xD1:FILE ...]...
//
// "--" separates input sets: each runs REPEAT times, one after the other; OUT.bin gets the last set's output.
//
// --device cuda (a Jetson build's model.so): loads TVM's CUDA runtime plugin, lib/libtvm_runtime_cuda.so
// beside this runner (it needs the board's libcudart.so.13 and libcuda.so.1), runs the model on GPU 0 and
// times each run to the end of its kernels; inputs and the output are copied between host and GPU.
//
// Inputs are little-endian raw arrays (int64 or int32) in the order the library's "main" takes them.
// --lengths (an any-length library's buckets, metadata.json "lengths"): inputs of D1 tokens, any D1 up to
// the last, are zero-padded to the smallest bucket that holds them (mask 0: the answer does not change)
// and run by that bucket's function, "main_<bucket>" ("main" for the last).
// TVM's thread pool: N threads (the library's target threads; 0 or none: all), at most the CPUs this
// process may use, and a spin count of 1000, unless TVM_NUM_THREADS / TVM_THREAD_POOL_SPIN_COUNT are set
// (TVM alone takes half the logical CPUs on x86 and spins 300000 times: compiler/runtime.py).
// Exit codes: 0 ok, 2 usage, 3 unreadable input, 4 the library failed to load or run.
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <dlfcn.h>
#include <limits.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

// TVM's kernels assume 64-byte aligned buffers (aligned vector loads): plain malloc crashes them.
struct CPUAlloc {
  void AllocData(DLTensor* t) { t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) + 63) / 64 * 64); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

static std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) out.push_back(item);
  return out;
}

// Set before the runtime starts its pool, which reads both variables once.
static int ConfigureThreads(int wanted) {
  cpu_set_t set;
  int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  int threads = wanted > 0 ? std::min(wanted, cpus) : cpus;
  if (const char* env = std::getenv("TVM_NUM_THREADS"); env && std::atoi(env) > 0) {
    threads = std::atoi(env);
  } else {
    setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
  }
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "1000", 0);
  return threads;
}

// TVM's CUDA plugin registers the "cuda" module loader and device API; it sits in lib/ beside the runner.
static bool LoadCudaPlugin() {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  std::string dir = n > 0 ? std::string(exe, n) : std::string(".");
  dir = dir.substr(0, dir.find_last_of('/') + 1);
  for (const std::string& path : {dir + "lib/libtvm_runtime_cuda.so", dir + "libtvm_runtime_cuda.so"}) {
    if (access(path.c_str(), F_OK) != 0) continue;
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) return true;
    std::cerr << "run_model: cannot load " << path << ": " << dlerror() << "\n";
    return false;
  }
  std::cerr << "run_model: --device cuda needs libtvm_runtime_cuda.so in " << dir << "lib/\n";
  return false;
}

struct InputSet {
  std::vector<ffi::Tensor> tensors;
  int64_t bucket = 0;  // 0: inputs run as given, by "main"
};

static constexpr long kMarkSyscall = 0x5345;  // count_insns.c's MARK_SYSCALL
static const DLDevice cpu{kDLCPU, 0};

// One NAME:DTYPE:D0xD1:FILE spec into a tensor of the set (padded to a bucket with --lengths); 0 or an exit code.
static int ReadInput(const char* spec, const std::vector<int64_t>& lengths, InputSet* set) {
  auto parts = Split(spec, ':');
  if (parts.size() != 4 || (parts[1] != "int64" && parts[1] != "int32")) {
    std::cerr << "run_model: bad input spec '" << spec << "'\n";
    return 2;
  }
  std::vector<int64_t> shape;
  for (auto& d : Split(parts[2], 'x')) shape.push_back(std::atoll(d.c_str()));
  DLDataType dtype{kDLInt, static_cast<uint8_t>(parts[1] == "int64" ? 64 : 32), 1};
  std::vector<int64_t> padded = shape;
  if (!lengths.empty()) {
    if (shape.size() != 2 || shape[1] < 1 || shape[1] > lengths.back()) {
      std::cerr << "run_model: input " << parts[0] << " has " << (shape.size() == 2 ? shape[1] : -1)
                << " tokens; this library takes 1 to " << lengths.back() << "\n";
      return 3;
    }
    padded[1] = *std::find_if(lengths.begin(), lengths.end(), [&](int64_t b) { return b >= shape[1]; });
    if (set->bucket && set->bucket != padded[1]) {
      std::cerr << "run_model: the inputs differ in length\n";
      return 3;
    }
    set->bucket = padded[1];
  }
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(padded), dtype, cpu);
  size_t bytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  size_t elem = dtype.bits / 8, rows = padded.size() == 2 ? padded[0] : 1;
  size_t row_in = (shape.size() == 2 ? shape[1] : bytes / elem) * elem, row_out = bytes / rows;
  std::memset(t.GetDLTensorPtr()->data, 0, bytes);  // the padding: id 0 ([PAD]), mask 0, type 0
  std::ifstream f(parts[3], std::ios::binary);
  for (size_t r = 0; r < rows; ++r) {
    if (!f.read(static_cast<char*>(t.GetDLTensorPtr()->data) + r * row_out, row_in)) {
      std::cerr << "run_model: " << parts[3] << " does not hold " << rows * row_in << " bytes\n";
      return 3;
    }
  }
  if (f.peek() != EOF) {
    std::cerr << "run_model: " << parts[3] << " does not hold " << rows * row_in << " bytes\n";
    return 3;
  }
  set->tensors.push_back(t);
  return 0;
}

int main(int argc, char** argv) {
  int wanted = 0;
  bool cuda = false;
  std::vector<int64_t> lengths;
  while (argc > 2 && (std::strcmp(argv[1], "--threads") == 0 || std::strcmp(argv[1], "--lengths") == 0 ||
                      std::strcmp(argv[1], "--device") == 0)) {
    if (argv[1][2] == 't') {
      wanted = std::atoi(argv[2]);
    } else if (argv[1][2] == 'd') {
      if (std::strcmp(argv[2], "cuda") != 0 && std::strcmp(argv[2], "cpu") != 0) {
        std::cerr << "run_model: --device is cpu or cuda, not '" << argv[2] << "'\n";
        return 2;
      }
      cuda = std::strcmp(argv[2], "cuda") == 0;
    } else {
      for (auto& l : Split(argv[2], ',')) lengths.push_back(std::atoll(l.c_str()));
    }
    argv += 2;
    argc -= 2;
  }
  if (argc < 5) {
    std::cerr << "usage: run_model [--device cpu|cuda] [--threads N] [--lengths L1,L2,...] LIB.so OUT.bin REPEAT "
                 "NAME:DTYPE:D0xD1:FILE ... [-- NAME:DTYPE:D0xD1:FILE ...]...\n";
    return 2;
  }
  if (cuda && !LoadCudaPlugin()) return 4;
  std::fprintf(stderr, "threads: %d\n", ConfigureThreads(wanted));
  // input sets: the specs after REPEAT, "--" between sets; each set runs REPEAT times in turn
  std::vector<InputSet> sets(1);
  for (int i = 4; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      sets.emplace_back();
      continue;
    }
    if (int rc = ReadInput(argv[i], lengths, &sets.back())) return rc;
  }
  for (auto& set : sets) {
    if (set.tensors.empty()) {
      std::cerr << "run_model: an empty input set (\"--\" with no input spec after it)\n";
      return 2;
    }
  }
  // SE_COUNT_MARKS: a marker system call before and after each run, for the instruction counter
  // (compiler/deploy/runner/count_insns.c) to read the count at; a kernel without it answers ENOSYS
  const bool marks = std::getenv("SE_COUNT_MARKS") != nullptr;
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // device type, device id, allocator (2 = pooled) per device, as relax.VirtualMachine does for tvm.cpu()
    // and, for a CUDA library, (tvm.cuda(), tvm.cpu()): the VM copies the inputs to the first
    const DLDevice gpu{kDLCUDA, 0};
    if (cuda) {
      vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCUDA), 0, 2, static_cast<int>(kDLCPU), 0, 2);
    } else {
      vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    }
    // kernels run asynchronously: a run ends when the GPU's default stream is drained (looked up once,
    // outside the timed runs)
    std::optional<ffi::Function> stream_sync;
    if (cuda) stream_sync = ffi::Function::GetGlobal("runtime.Device_StreamSync").value();
    auto sync = [&] {
      if (stream_sync) (*stream_sync)(gpu, static_cast<void*>(nullptr));
    };
    ffi::Function set_input = vm->GetFunction("set_input").value();
    ffi::Function invoke = vm->GetFunction("invoke_stateful").value();
    ffi::Function get_output = vm->GetFunction("get_output").value();
    ffi::Function get_output_arity = vm->GetFunction("get_output_arity").value();
    int repeat = std::max(1, std::atoi(argv[3]));
    ffi::String main_name("main");  // AnyView does not own: kept alive across the calls below
    long run = 0;
    for (auto& set : sets) {
      main_name = set.bucket && set.bucket != lengths.back() ? "main_" + std::to_string(set.bucket)
                                                              : std::string("main");
      std::vector<ffi::AnyView> args;
      args.push_back(main_name);
      for (auto& t : set.tensors) args.push_back(t);
      ffi::Any unused;
      set_input.CallPacked(args.data(), static_cast<int>(args.size()), &unused);
      for (int r = 0; r < repeat; ++r, ++run) {
        if (marks) syscall(kMarkSyscall, 2 * run);
        auto t0 = std::chrono::steady_clock::now();
        invoke(main_name);
        sync();
        auto t1 = std::chrono::steady_clock::now();
        if (marks) syscall(kMarkSyscall, 2 * run + 1);
        std::printf("run %d: %.3f ms\n", r, std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
    }
    // a single tensor has arity -1; a tuple's first field is output 0
    bool single = get_output_arity(main_name).cast<int>() == -1;
    ffi::Any out = single ? get_output(main_name) : get_output(main_name, 0);
    auto tensor = out.cast<ffi::Tensor>();
    if (cuda) {  // to host memory
      auto host = ffi::Tensor::FromNDAlloc(CPUAlloc(), tensor.shape(), tensor.dtype(), cpu);
      ffi::Function::GetGlobal("runtime.TVMTensorCopyFromTo").value()(tensor, host);
      sync();
      tensor = host;
    }
    const DLTensor* dl = tensor.GetDLTensorPtr();
    if (dl->dtype.code != kDLFloat || dl->dtype.bits != 32) {
      std::cerr << "run_model: output 0 is not float32\n";
      return 4;
    }
    std::ofstream o(argv[2], std::ios::binary);
    o.write(static_cast<const char*>(dl->data), ffi::GetDataSize(*dl));
    std::printf("output 0: %lld values\n", static_cast<long long>(ffi::GetDataSize(*dl) / 4));
  } catch (const std::exception& e) {
    bool gpu_lib = !cuda && std::strstr(e.what(), "{cuda}") != nullptr;  // a CUDA library run on the CPU
    std::cerr << "run_model: " << e.what() << (gpu_lib ? " (a CUDA library: run it with --device cuda)" : "") << "\n";
    return 4;
  }
  return 0;
}
