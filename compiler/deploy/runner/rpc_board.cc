// squeezeedge emulated board: serve one TVM RPC session on an already connected socket with the TVM
// runtime of the board's architecture. compiler/deploy/emulated_board.py does the tracker registration and
// the handshake in Python (TVM's own server code) and runs this under qemu-user for each session, so a
// tuning run measures aarch64 kernels with no board attached.
//
//   rpc_board FD WORKDIR
//
// The runtime carries the RPC endpoint and the upload/download/remove handlers; the server provides
// where files go (tvm.rpc.server.workpath), how a library is loaded (tvm.rpc.server.load_module), and
// the input filler MetaSchedule's RPC runner calls (tvm.contrib.random.random_fill_for_measure, which
// the runtime wheel leaves out).
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace ffi = tvm::ffi;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: rpc_board FD WORKDIR\n");
    return 2;
  }
  std::string dir = argv[2];
  ffi::Function::SetGlobal("tvm.rpc.server.workpath",
                           ffi::Function::FromTyped([dir](std::string name) { return dir + "/" + name; }));
  ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped([dir](std::string name) {
                             return ffi::Module::LoadFromFile(dir + "/" + name);
                           }));
  ffi::Function::SetGlobal("tvm.contrib.random.random_fill_for_measure", ffi::Function::FromTyped([](DLTensor* t) {
                             uint64_t state = 0x9E3779B97F4A7C15ull;
                             size_t n = ffi::GetDataSize(*t);
                             auto* bytes = static_cast<uint8_t*>(t->data) + t->byte_offset;
                             bool f32 = t->dtype.code == kDLFloat && t->dtype.bits == 32;
                             for (size_t i = 0; i < n; i += f32 ? 4 : 1) {
                               state = state * 6364136223846793005ull + 1442695040888963407ull;
                               if (f32) {  // uniform in [-1, 1): no NaN or overflow in float kernels
                                 float v = static_cast<float>(state >> 40) / static_cast<float>(1 << 23) - 1.0f;
                                 std::memcpy(bytes + i, &v, 4);
                               } else {
                                 bytes[i] = static_cast<uint8_t>(state >> 56);
                               }
                             }
                           }));
  auto loop = ffi::Function::GetGlobal("rpc.ServerLoop");
  if (!loop.has_value()) {
    std::fprintf(stderr, "this TVM runtime has no RPC server (rpc.ServerLoop)\n");
    return 4;
  }
  (*loop)(static_cast<int64_t>(std::atoi(argv[1])));
  return 0;
}
