// squeezeedge emulated board: serve one TVM RPC session on an already connected socket with the TVM
// runtime of the board's architecture. compiler/emulated_board.py does the tracker registration and
// the handshake in Python (TVM's own server code) and runs this under qemu-user for each session, so a
// tuning run measures aarch64 kernels with no board attached.
//
//   rpc_board FD WORKDIR
//
// The runtime carries the RPC endpoint and the upload/download/remove handlers; the server provides
// where files go (tvm.rpc.server.workpath) and how a library is loaded (tvm.rpc.server.load_module).
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
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
  auto loop = ffi::Function::GetGlobal("rpc.ServerLoop");
  if (!loop.has_value()) {
    std::fprintf(stderr, "this TVM runtime has no RPC server (rpc.ServerLoop)\n");
    return 4;
  }
  (*loop)(static_cast<int64_t>(std::atoi(argv[1])));
  return 0;
}
