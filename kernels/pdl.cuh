// Programmatic dependent launch (Hopper and later; no-ops on older devices and when a kernel was
// not launched as a programmatic dependent). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the kernel before it in the
// stream is still running: it must call PdlWaitForPrerequisites() before it reads anything that
// kernel (or any earlier one) writes, and before it writes anything they read. A kernel that calls
// PdlLaunchDependents() lets such a dependent's blocks be scheduled from then on, instead of only
// as its own blocks exit; correctness never depends on where the trigger sits. Include only from
// .cu files.
#pragma once

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

}  // namespace gsa::kernels
