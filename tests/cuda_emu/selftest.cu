// Checks of the CPU emulator itself (tests/test_cuda_emulator.py rewrites this file with
// build.rewrite_device, compiles it with the host compiler and reads what it prints):
// each case prints one line "<case> <result>" that the test compares with what CUDA does.
//
//   selftest kernels            the execution-model cases below
//   selftest fault WHICH        a kernel a GPU would fault on (misaligned, shared_overflow)
//   selftest convert IN OUT     IN: float32 values; OUT: their __half bits, then their
//                               __nv_bfloat16 bits, then __half2float / __bfloat162float of
//                               all 65536 bit patterns (float32)
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 256;

// A tree sum over the block with its barriers: correct in every order.
__global__ void __launch_bounds__(kThreads) tree_sum_kernel(const float* in, float* out) {
  __shared__ float red[kThreads];
  red[threadIdx.x] = in[blockIdx.x * kThreads + threadIdx.x];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = red[0];
}

// The barrier between writing and reading a neighbour's slot is missing: a race.
__global__ void missing_barrier_kernel(int* out) {
  __shared__ int slot[64];
  slot[threadIdx.x] = static_cast<int>(threadIdx.x);
  out[threadIdx.x] = slot[(threadIdx.x + 1) % 64];
}

// Half of the threads return before a barrier the others wait at.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x % 2) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

// Reads shared memory no thread wrote.
__global__ void unwritten_shared_kernel(float* out) {
  __shared__ float never_written[32];
  out[threadIdx.x] = never_written[threadIdx.x];
}

// Every (block, thread) of a 2-D grid of 2-D blocks writes its own flat index once.
__global__ void index_kernel(int* out) {
  const unsigned bx = blockIdx.x + gridDim.x * blockIdx.y;
  const unsigned tx = threadIdx.x + blockDim.x * threadIdx.y;
  const unsigned id = bx * blockDim.x * blockDim.y + tx;
  out[id] += static_cast<int>(id) + 1;
}

__global__ void __launch_bounds__(128) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// A 16-byte vector load at an address that is only 4-byte aligned: a misaligned-address fault on a GPU.
__global__ void misaligned_load_kernel(const float* in, float* out) {
  out[threadIdx.x] = reinterpret_cast<const Vec<float, 4>*>(in + 1)->v[0];
}

// Indexes a shared array one past its end.
__global__ void shared_overflow_kernel(float* out) {
  __shared__ float buf[32];
  buf[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

// Reads one element past the end of its input (a heap buffer): only AddressSanitizer sees it.
__global__ void global_overflow_kernel(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x + 1];
}

void report(const char* name, const std::string& result) { std::printf("%s %s\n", name, result.c_str()); }

std::string error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "ok";
    case cudaErrorInvalidConfiguration: return "invalid_configuration";
    case cudaErrorLaunchOutOfResources: return "out_of_resources";
    case cudaErrorLaunchFailure: return std::string("launch_failure:") + cudaGetErrorString(e);
    default: return "error_" + std::to_string(static_cast<int>(e));
  }
}

int kernels() {
  {  // tree sums over 3 blocks, each block's input 0..255 scaled by the block
    std::vector<float> in(3 * kThreads), out(3, -1.0f);
    for (int b = 0; b < 3; ++b)
      for (int t = 0; t < kThreads; ++t) in[b * kThreads + t] = static_cast<float>((b + 1) * t);
    tree_sum_kernel<<<3, kThreads>>>(in.data(), out.data());
    const cudaError_t e = cudaGetLastError();
    const bool right = out[0] == 32640.0f && out[1] == 65280.0f && out[2] == 97920.0f;
    report("tree_sum", e != cudaSuccess ? error_name(e) : right ? "ok" : "wrong");
  }
  {  // the race shows: some thread reads its neighbour's slot before the neighbour wrote it
    std::vector<int> out(64, 0);
    missing_barrier_kernel<<<1, 64>>>(out.data());
    int stale = 0;
    for (int t = 0; t < 64; ++t) stale += out[t] != (t + 1) % 64;
    report("missing_barrier", error_name(cudaGetLastError()) + (stale ? ":stale_reads" : ":no_stale_reads"));
  }
  {
    std::vector<float> out(64, 0.0f);
    divergent_barrier_kernel<<<1, 64>>>(out.data());
    const cudaError_t e = cudaGetLastError();
    report("divergent_barrier", e == cudaErrorLaunchFailure && std::strstr(cudaGetErrorString(e), "divergent")
                                    ? "detected" : error_name(e));
  }
  {  // two warps: lane values 0..63
    std::vector<float> in(64), out(2, -1.0f);
    for (int t = 0; t < 64; ++t) in[t] = static_cast<float>(t);
    warp_sum_kernel<<<1, 64>>>(in.data(), out.data());
    const cudaError_t e = cudaGetLastError();
    report("warp_sum", e != cudaSuccess ? error_name(e) : out[0] == 496.0f && out[1] == 1520.0f ? "ok" : "wrong");
  }
  {  // 48 threads: the second warp has 16 lanes
    std::vector<float> in(48, 1.0f), out(2, -1.0f);
    warp_sum_kernel<<<1, 48>>>(in.data(), out.data());
    const cudaError_t e = cudaGetLastError();
    report("partial_warp_shuffle",
           e == cudaErrorLaunchFailure && std::strstr(cudaGetErrorString(e), "fewer than 32") ? "detected"
                                                                                             : error_name(e));
  }
  {
    std::vector<float> out(32, 0.0f);
    unwritten_shared_kernel<<<1, 32>>>(out.data());
    const cudaError_t e = cudaGetLastError();
    bool nan = true;
    for (float v : out) nan = nan && v != v;
    report("unwritten_shared", e != cudaSuccess ? error_name(e) : nan ? "nan" : "not_nan");
  }
  {  // grid (3, 2) of blocks (4, 2): each of the 48 entries written exactly once
    std::vector<int> out(48, 0);
    index_kernel<<<dim3(3, 2), dim3(4, 2)>>>(out.data());
    const cudaError_t e = cudaGetLastError();
    bool right = true;
    for (int i = 0; i < 48; ++i) right = right && out[i] == i + 1;
    report("indexing", e != cudaSuccess ? error_name(e) : right ? "ok" : "wrong");
  }
  {
    std::vector<float> out(2048, 0.0f);
    bounded_kernel<<<0, 32>>>(out.data());
    report("empty_grid", error_name(cudaGetLastError()));
    bounded_kernel<<<1, 2048>>>(out.data());
    report("block_over_1024", error_name(cudaGetLastError()));
    bounded_kernel<<<dim3(1, 70000), 32>>>(out.data());
    report("grid_y_over_65535", error_name(cudaGetLastError()));
    bounded_kernel<<<1, 256>>>(out.data());
    report("over_launch_bounds", error_name(cudaGetLastError()));
    bounded_kernel<<<1, 128>>>(out.data());
    report("within_launch_bounds", error_name(cudaGetLastError()));
  }
  return 0;
}

// Each aborts under the build's sanitizers (the test expects a crash naming the problem).
int fault(const std::string& which) {
  std::vector<float> in(64, 1.0f), out(64, 0.0f);
  alignas(16) static float aligned[64];
  if (which == "misaligned") misaligned_load_kernel<<<1, 32>>>(aligned, out.data());
  if (which == "shared_overflow") shared_overflow_kernel<<<1, 32>>>(out.data());
  if (which == "global_overflow") {
    std::vector<float> small(32, 1.0f);
    global_overflow_kernel<<<1, 32>>>(small.data(), out.data());
  }
  std::printf("%s no_fault\n", which.c_str());
  return 0;
}

int convert(const char* in_path, const char* out_path) {
  std::FILE* in = std::fopen(in_path, "rb");
  if (in == nullptr) return 2;
  std::vector<float> values;
  float v;
  while (std::fread(&v, sizeof v, 1, in) == 1) values.push_back(v);
  std::fclose(in);
  std::vector<uint16_t> bits;
  for (float f : values) bits.push_back(__float2half_rn(f).bits);
  for (float f : values) bits.push_back(__float2bfloat16_rn(f).bits);
  std::vector<float> widened;
  for (uint32_t b = 0; b < 65536; ++b) widened.push_back(__half2float(__half{static_cast<uint16_t>(b)}));
  for (uint32_t b = 0; b < 65536; ++b)
    widened.push_back(__bfloat162float(__nv_bfloat16{static_cast<uint16_t>(b)}));
  std::FILE* out = std::fopen(out_path, "wb");
  if (out == nullptr) return 2;
  std::fwrite(bits.data(), sizeof(uint16_t), bits.size(), out);
  std::fwrite(widened.data(), sizeof(float), widened.size(), out);
  std::fclose(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "kernels") return kernels();
  if (argc >= 4 && std::string(argv[1]) == "convert") return convert(argv[2], argv[3]);
  if (argc >= 3 && std::string(argv[1]) == "fault") return fault(argv[2]);
  std::fprintf(stderr, "usage: selftest kernels | selftest convert IN OUT\n");
  return 2;
}
