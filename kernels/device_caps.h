// Host: which of our kernels' instruction sets a device runs, decided from its compute capability
// in one place. Plain host code (includable from .cc files: the tests ask the same questions). An
// error asking is returned as is, with *supported false.
#pragma once

#include <cuda_runtime.h>

namespace gsa::kernels {

// Whether `device` takes programmatic dependent launches (kernels/pdl.cuh): compute capability
// ≥ 9.0, Hopper and later.
inline cudaError_t ProgrammaticLaunchSupported(int device, bool* supported) {
  int major = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  *supported = err == cudaSuccess && major >= 9;
  return err;
}

// Whether `device` runs this build's wgmma kernels (kernels/wgmma.cuh): compute capability exactly
// 9.0, the sm_90a code; other devices get the compute_80 PTX, which has no wgmma.
inline cudaError_t WgmmaSupported(int device, bool* supported) {
  int major = 0, minor = 0;
  cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  *supported = err == cudaSuccess && major == 9 && minor == 0;
  return err;
}

// Either question for the current device.
inline cudaError_t OnCurrentDevice(cudaError_t (*question)(int, bool*), bool* supported) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  *supported = false;
  return err == cudaSuccess ? question(device, supported) : err;
}

}  // namespace gsa::kernels
