// The pybind11 module nvwavenet._C: the Params struct, build facts, and the engines' entry points.
// Pointers cross as integers (tensor.data_ptr()), so nothing here depends on libtorch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "conditioning.h"
#include "cpu/engine.h"
#include "cpu/packing.h"
#include "nvwavenet.h"
#include "sizes.h"
#ifdef NVWAVENET_WITH_CUDA
#include "cuda/api.h"
#include "cuda/plan_dict.h"
#endif

namespace py = pybind11;
using nvwavenet::DType;
using nvwavenet::Params;
using nvwavenet::Variant;

namespace {

std::vector<int> parse_archs(const std::string& text) {
  std::vector<int> archs;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ';')) {
    if (!item.empty()) archs.push_back(std::stoi(item));
  }
  return archs;
}

py::dict build_info() {
  py::dict info;
  info["version"] = NVWAVENET_VERSION;
  py::dict variants;
#define NVWAVENET_VARIANT_CODE(enumerator, value, name) variants[name] = value;
  NVWAVENET_FOR_EACH_VARIANT(NVWAVENET_VARIANT_CODE)
#undef NVWAVENET_VARIANT_CODE
  info["variants"] = variants;
#ifdef NVWAVENET_WITH_CUDA
  std::vector<std::tuple<int, int, int>> sizes;
#define NVWAVENET_LIST_SIZE(R, S, A) sizes.emplace_back(R, S, A);
  NVWAVENET_FOR_EACH_SIZE(NVWAVENET_LIST_SIZE)
#undef NVWAVENET_LIST_SIZE
  std::vector<std::tuple<int, int, int>> persistent;
  for (const auto& size : nvwavenet::gpu::persistent_sizes()) persistent.emplace_back(size[0], size[1], size[2]);
  py::dict variant_sizes;
  // The persistent kernel's variants only where a layer fits one block; TENSOR_CORE's plan refuses
  // R=256 float32 (shared memory) with the reason.
#define NVWAVENET_VARIANT_SIZES(enumerator, value, name) \
  variant_sizes[name] = nvwavenet::gpu::runs_persistent_kernel(Variant::enumerator) ? persistent : sizes;
  NVWAVENET_FOR_EACH_VARIANT(NVWAVENET_VARIANT_SIZES)
#undef NVWAVENET_VARIANT_SIZES
  info["cuda"] = true;
  info["cuda_archs"] = parse_archs(NVWAVENET_CUDA_ARCHS);
  info["sizes"] = sizes;
  info["variant_sizes"] = variant_sizes;
  info["precisions"] = std::vector<std::string>{"float32", "float16", "bfloat16"};
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::vector<int>{};
  info["sizes"] = std::vector<std::tuple<int, int, int>>{};
  info["variant_sizes"] = py::dict();
  info["precisions"] = std::vector<std::string>{};
#endif
  info["cpu_isa"] = nvwavenet::cpu::best_isa();
  info["cpu_threads"] = nvwavenet::cpu::default_threads();
  return info;
}

#ifdef NVWAVENET_WITH_CUDA
Variant as_variant(int variant) {
  if (nvwavenet::variant_name(variant) == nullptr)
    throw std::invalid_argument("variant: expected an nvwavenet.Impl value, got " + std::to_string(variant));
  return static_cast<Variant>(variant);
}

py::dict cuda_plan(const Params& params, int variant) {
  return nvwavenet::gpu::plan_dict(nvwavenet::gpu::plan(params, as_variant(variant)));
}
#endif

}  // namespace

// A pointer field read and written from Python as an integer address.
#define POINTER_FIELD(cls, field, type)                                              \
  def_property(                                                                      \
      #field, [](const Params& p) { return reinterpret_cast<std::uintptr_t>(p.field); }, \
      [](Params& p, std::uintptr_t address) { p.field = reinterpret_cast<type>(address); })

PYBIND11_MODULE(_C, m) {
  m.doc() = "nvwavenet's compiled engines";
  py::enum_<DType>(m, "DType")
      .value("float32", DType::Float32)
      .value("float16", DType::Float16)
      .value("bfloat16", DType::BFloat16);

  py::class_<Params>(m, "Params")
      .def(py::init<>())
      .def_readwrite("R", &Params::R)
      .def_readwrite("S", &Params::S)
      .def_readwrite("A", &Params::A)
      .def_readwrite("L", &Params::L)
      .def_readwrite("max_dilation", &Params::max_dilation)
      .def_readwrite("use_embed_tanh", &Params::use_embed_tanh)
      .def_readwrite("batch", &Params::batch)
      .def_readwrite("num_samples", &Params::num_samples)
      .def_readwrite("weight_dtype", &Params::weight_dtype)
      .POINTER_FIELD(Params, embed_prev, const void*)
      .POINTER_FIELD(Params, embed_curr, const void*)
      .POINTER_FIELD(Params, dilate_w, const void*)
      .POINTER_FIELD(Params, dilate_b, const void*)
      .POINTER_FIELD(Params, res_w, const void*)
      .POINTER_FIELD(Params, res_b, const void*)
      .POINTER_FIELD(Params, skip_w, const void*)
      .POINTER_FIELD(Params, skip_b, const void*)
      .POINTER_FIELD(Params, out_w, const void*)
      .POINTER_FIELD(Params, out_b, const void*)
      .POINTER_FIELD(Params, end_w, const void*)
      .POINTER_FIELD(Params, end_b, const void*)
      .POINTER_FIELD(Params, fold_w, const void*)
      .POINTER_FIELD(Params, fold_b, const void*)
      .POINTER_FIELD(Params, cpu_weights, const void*)
      .def_readwrite("cpu_weights_bytes", &Params::cpu_weights_bytes)
      .POINTER_FIELD(Params, cond, const void*)
      .def_readwrite("cond_dtype", &Params::cond_dtype)
      .def_readwrite("cond_stride_channel", &Params::cond_stride_channel)
      .def_readwrite("cond_stride_batch", &Params::cond_stride_batch)
      .def_readwrite("cond_stride_layer", &Params::cond_stride_layer)
      .def_readwrite("cond_stride_time", &Params::cond_stride_time)
      .POINTER_FIELD(Params, selectors, const float*)
      .def_readwrite("selectors_stride_batch", &Params::selectors_stride_batch)
      .def_readwrite("selectors_stride_time", &Params::selectors_stride_time)
      .POINTER_FIELD(Params, teacher, const int32_t*)
      .def_readwrite("teacher_stride_batch", &Params::teacher_stride_batch)
      .def_readwrite("teacher_stride_time", &Params::teacher_stride_time)
      .POINTER_FIELD(Params, samples, int32_t*)
      .def_readwrite("samples_stride_batch", &Params::samples_stride_batch)
      .def_readwrite("samples_stride_time", &Params::samples_stride_time)
      .POINTER_FIELD(Params, logits, float*)
      .def_readwrite("logits_stride_batch", &Params::logits_stride_batch)
      .def_readwrite("logits_stride_class", &Params::logits_stride_class)
      .def_readwrite("logits_stride_time", &Params::logits_stride_time)
      .POINTER_FIELD(Params, queues, float*)
      .POINTER_FIELD(Params, history, int32_t*)
      .def_readwrite("position", &Params::position)
      .def_readwrite("pool_rows", &Params::pool_rows)
      .POINTER_FIELD(Params, slots, const int32_t*)
      .POINTER_FIELD(Params, positions, const int64_t*)
      .POINTER_FIELD(Params, steps, const int64_t*)
      .POINTER_FIELD(Params, workspace, void*)
      .def_readwrite("workspace_bytes", &Params::workspace_bytes)
      .POINTER_FIELD(Params, stream, void*)
      .def_readwrite("num_threads", &Params::num_threads)
      .def_readwrite("device", &Params::device)
      .def_readwrite("streams_per_block", &Params::streams_per_block)
      .def_readwrite("spin_timeout_ns", &Params::spin_timeout_ns);

#define COND_POINTER(field, type)                                                                            \
  def_property(                                                                                              \
      #field, [](const nvwavenet::CondParams& p) { return reinterpret_cast<std::uintptr_t>(p.field); },      \
      [](nvwavenet::CondParams& p, std::uintptr_t address) { p.field = reinterpret_cast<type>(address); })
  py::class_<nvwavenet::CondParams>(m, "CondParams", "The arguments of condition_cpu/condition_cuda (conditioning.h).")
      .def(py::init<>())
      .def_readwrite("batch", &nvwavenet::CondParams::batch)
      .def_readwrite("max_frames", &nvwavenet::CondParams::max_frames)
      .def_readwrite("channels", &nvwavenet::CondParams::channels)
      .def_readwrite("context", &nvwavenet::CondParams::context)
      .def_readwrite("hop", &nvwavenet::CondParams::hop)
      .def_readwrite("rows", &nvwavenet::CondParams::rows)
      .def_readwrite("frames_stride_batch", &nvwavenet::CondParams::frames_stride_batch)
      .def_readwrite("frames_stride_channel", &nvwavenet::CondParams::frames_stride_channel)
      .def_readwrite("frames_stride_time", &nvwavenet::CondParams::frames_stride_time)
      .def_readwrite("out_stride_batch", &nvwavenet::CondParams::out_stride_batch)
      .def_readwrite("out_stride_row", &nvwavenet::CondParams::out_stride_row)
      .def_readwrite("num_threads", &nvwavenet::CondParams::num_threads)
      .def_readwrite("workspace_bytes", &nvwavenet::CondParams::workspace_bytes)
      .COND_POINTER(counts, const int32_t*)
      .COND_POINTER(frames, const float*)
      .COND_POINTER(up_w, const float*)
      .COND_POINTER(up_b, const float*)
      .COND_POINTER(proj_w, const float*)
      .COND_POINTER(proj_b, const float*)
      .COND_POINTER(out, float*)
      .COND_POINTER(stream, void*)
      .COND_POINTER(workspace, void*);
#undef COND_POINTER
  m.def("condition_cpu", &nvwavenet::cpu::condition_cpu, py::arg("params"), py::call_guard<py::gil_scoped_release>(),
        "Mel frames to conditioning in a fixed order of arithmetic (conditioning.h), on host memory.");

  m.def("build_info", &build_info,
        "What was compiled: CUDA kernels, architectures, sizes, precisions; the CPU engine's "
        "instruction set and default thread count.");

  m.def("cpu_packed_bytes", &nvwavenet::cpu::cpu_packed_bytes, py::arg("params"),
        "Bytes of the CPU engine's packed weights for the sizes and weight_dtype in params.");
  m.def(
      "pack_cpu_weights",
      [](const Params& p, std::uintptr_t dst, int64_t dst_bytes) {
        nvwavenet::cpu::pack_cpu_weights(p, reinterpret_cast<void*>(dst), dst_bytes);
      },
      py::arg("params"), py::arg("dst"), py::arg("dst_bytes"),
      "Packs params' weights (in weight_dtype) into the CPU engine's layout at address dst "
      "(cpu_packed_bytes(params) bytes, 64-byte aligned).");
  m.def(
      "generate_cpu",
      [](const Params& p, const std::string& isa) {
        py::gil_scoped_release release;
        nvwavenet::cpu::generate_cpu(p, isa);
      },
      py::arg("params"), py::arg("isa") = "auto",
      "Runs the CPU engine on params (cpu_weights packed); isa: 'auto', 'avx512', 'avx2+fma' or 'generic'.");
  m.def(
      "session_step_cpu",
      [](Params& p, std::uintptr_t cond, DType cond_dtype, const std::array<int64_t, 4>& cond_strides,
         std::uintptr_t selectors, const std::array<int64_t, 2>& selector_strides, std::uintptr_t samples,
         const std::array<int64_t, 2>& sample_strides, std::uintptr_t logits, const std::array<int64_t, 3>& logit_strides,
         int32_t batch, int64_t num_samples, std::uintptr_t slots, std::uintptr_t steps, std::uintptr_t pool_positions,
         std::uintptr_t call_positions, const std::string& isa) {
        p.cond = reinterpret_cast<const void*>(cond);
        p.cond_dtype = cond_dtype;
        p.cond_stride_channel = cond_strides[0], p.cond_stride_batch = cond_strides[1];
        p.cond_stride_layer = cond_strides[2], p.cond_stride_time = cond_strides[3];
        p.selectors = reinterpret_cast<const float*>(selectors);
        p.selectors_stride_batch = selector_strides[0], p.selectors_stride_time = selector_strides[1];
        p.samples = reinterpret_cast<int32_t*>(samples);
        p.samples_stride_batch = sample_strides[0], p.samples_stride_time = sample_strides[1];
        p.logits = reinterpret_cast<float*>(logits);
        p.logits_stride_batch = logit_strides[0], p.logits_stride_class = logit_strides[1];
        p.logits_stride_time = logit_strides[2];
        p.batch = batch, p.num_samples = num_samples;
        p.slots = reinterpret_cast<const int32_t*>(slots);
        p.steps = reinterpret_cast<const int64_t*>(steps);
        py::gil_scoped_release release;
        nvwavenet::cpu::generate_pool_cpu(p, reinterpret_cast<int64_t*>(pool_positions),
                                          reinterpret_cast<int64_t*>(call_positions), isa);
      },
      py::arg("params"), py::arg("cond"), py::arg("cond_dtype"), py::arg("cond_strides"), py::arg("selectors"),
      py::arg("selector_strides"), py::arg("samples"), py::arg("sample_strides"), py::arg("logits"),
      py::arg("logit_strides"), py::arg("batch"), py::arg("num_samples"), py::arg("slots"), py::arg("steps"), py::arg("pool_positions"),
      py::arg("call_positions"), py::arg("isa"),
      "One step call of an nvwavenet.session.Session on the CPU engine, in one crossing: fills the per-call "
      "fields of params (logits, steps 0: none) and runs generate_pool_cpu (positions read from and advanced in "
      "pool_positions, int64 per pool row, through the int64 [batch] scratch call_positions).");
  m.def("find_nan_cond", &nvwavenet::cpu::find_nan_cond, py::arg("params"), py::call_guard<py::gil_scoped_release>(),
        "(stream, step) of the earliest NaN in params.cond (host memory), or (-1, -1); reads the "
        "conditioning fields, R, L, batch and num_samples.");
#ifdef NVWAVENET_WITH_CUDA
  m.def("cuda_condition_workspace_bytes", &nvwavenet::gpu::cuda_condition_workspace_bytes, py::arg("params"));
  m.def("condition_cuda", &nvwavenet::gpu::condition_cuda, py::arg("params"), py::call_guard<py::gil_scoped_release>(),
        "condition_cpu's sums on params.stream, without waiting for them.");
  m.def("cuda_plan", &cuda_plan, py::arg("params"), py::arg("variant"),
        "How a CUDA variant (an nvwavenet.Impl value other than AUTO) would run these Params on "
        "params.device, or why it cannot ('runnable', 'reason'), and the zero-filled workspace it needs.");
  m.def("cuda_generate",
        [](const Params& params, int variant) { nvwavenet::gpu::generate(params, as_variant(variant)); },
        py::arg("params"), py::arg("variant"), py::call_guard<py::gil_scoped_release>(),
        "Runs a CUDA variant on params.stream and waits for it; errors become exceptions.");
  m.def("cuda_launch",
        [](const Params& params, int variant) { nvwavenet::gpu::launch_async(params, as_variant(variant)); },
        py::arg("params"), py::arg("variant"), py::call_guard<py::gil_scoped_release>(),
        "Launches a CUDA variant on params.stream without waiting: the caller reads the kernel's status "
        "block (the workspace's first bytes) after it, e.g. with nvwavenet.engines.cuda_status_error.");
  m.def(
      "cuda_status_message",
      [](int32_t code, int32_t site, int32_t block, int64_t step, uint64_t observed, uint64_t expected, int32_t variant,
         int64_t timeout_ns) {
        nvwavenet::gpu::DeviceStatus status{code, 1, site, block, step, observed, expected};
        return nvwavenet::gpu::status_message(status, variant, timeout_ns);
      },
      py::arg("code"), py::arg("site"), py::arg("block"), py::arg("step"), py::arg("observed"), py::arg("expected"),
      py::arg("variant"), py::arg("timeout_ns"),
      "The error text cuda_generate raises for a kernel status block with these fields (any values).");
#endif
}
