// Programmatic dependent launch (Hopper and later; no-ops on older devices and when a kernel was
// not launched as a programmatic dependent). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the kernel before it in the
// stream is still running: it must call PdlWaitForPrerequisites() before it reads anything that
// kernel (or any earlier one) writes, and before it writes anything they read. A kernel that calls
// PdlLaunchDependents() lets such a dependent's blocks be scheduled from then on, instead of only
// as its own blocks exit; correctness never depends on where the trigger sits. Include only from
// .cu files.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/device_caps.h"  // ProgrammaticLaunchSupported

namespace gsa::kernels {

// Waits until every prerequisite grid has completed and its memory operations are visible.
__device__ __forceinline__ void PdlWaitForPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Allows the next kernel in the stream, if it is a programmatic dependent, to be scheduled now.
__device__ __forceinline__ void PdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Host: launches `kernel` on `stream` as a programmatic dependent of the work before it when
// `programmatic` (pass compute capability ≥ 9: Hopper and later), else as an ordinary launch.
// The first form takes `smem` bytes of dynamic shared memory.
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchProgrammaticDependentSmem(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                                            cudaStream_t stream, bool programmatic, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchProgrammaticDependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream,
                                        bool programmatic, Args&&... args) {
  return LaunchProgrammaticDependentSmem(kernel, grid, block, 0, stream, programmatic, std::forward<Args>(args)...);
}

}  // namespace gsa::kernels
