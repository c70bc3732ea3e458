"""Running libraries off this process: bundles and the C++ runner under qemu (bundle), Jetson/CUDA
(cuda), RPC board fleets (fleet) and emulated aarch64 boards (emulated_board)."""
