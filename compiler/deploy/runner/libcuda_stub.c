/* A stand-in libcuda.so.1 for machines with no NVIDIA driver. TVM's CUDA runtime plugin
 * (libtvm_runtime_cuda.so) links libcuda.so.1; without it the plugin does not load and TVM leaves
 * CUDA kernels as source to be compiled on the device at load time. With this stub loaded the plugin
 * registers, TVM compiles the kernels with nvcc into a fatbin at build time, and embeds it. Every
 * entry point reports CUDA_ERROR_NO_DEVICE (100): nothing here ever runs a kernel. */
typedef int CUresult;
#define NO_DEVICE 100
static const char kMsg[] = "squeezeedge libcuda stub: no NVIDIA driver on this machine";
CUresult cuGetErrorName(CUresult e, const char** s) { (void)e; *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult e, const char** s) { (void)e; *s = kMsg; return 0; }
CUresult cuDeviceGetName(char* n, int len, int dev) { (void)n; (void)len; (void)dev; return NO_DEVICE; }
CUresult cuFuncSetAttribute(void* f, int a, int v) { (void)f; (void)a; (void)v; return NO_DEVICE; }
CUresult cuLaunchKernelEx(const void* c, void* f, void** p, void** e) { (void)c; (void)f; (void)p; (void)e; return NO_DEVICE; }
CUresult cuModuleGetFunction(void** f, void* m, const char* n) { (void)f; (void)m; (void)n; return NO_DEVICE; }
CUresult cuModuleLoadData(void** m, const void* img) { (void)m; (void)img; return NO_DEVICE; }
CUresult cuModuleUnload(void* m) { (void)m; return NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void* t, ...) { (void)t; return NO_DEVICE; }
