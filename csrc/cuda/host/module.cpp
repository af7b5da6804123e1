// nvwavenet_cuda_host: the CUDA engine's host interface (api.h: plan, generate) built from the
// kernels' own sources for the emulated device, for tests/test_cuda_host.py. Takes the Params of
// nvwavenet._C (imported first, so that pybind11 knows the type).
#include <pybind11/pybind11.h>

#include "../../conditioning.h"
#include "../api.h"
#include "../plan_dict.h"
#include "emu_control.h"

namespace py = pybind11;
using nvwavenet::Params;
using nvwavenet::Variant;

PYBIND11_MODULE(nvwavenet_cuda_host, m) {
  py::module_::import("nvwavenet._C");
  py::register_exception<nvw::emu::EmulationError>(m, "EmulationError", PyExc_RuntimeError);

  m.def(
      "plan",
      [](const Params& p, int variant) {
        return nvwavenet::gpu::plan_dict(nvwavenet::gpu::plan(p, static_cast<Variant>(variant)));
      },
      py::arg("params"), py::arg("variant"), "launch.cu's plan() on the emulated sm_90 device.");

  m.def(
      "generate",
      [](const Params& p, int variant, uint64_t seed, int max_live_units, int starve_block) {
        nvw::emu::Options options;
        options.seed = seed;
        options.max_live_units = max_live_units;
        options.starve_block = starve_block;
        options.spin_rounds = starve_block >= 0 ? 300 : 0;
        nvw::emu::set_options(options);
        nvwavenet::gpu::generate(p, static_cast<Variant>(variant));
      },
      py::arg("params"), py::arg("variant"), py::arg("seed") = 0, py::arg("max_live_units") = 2,
      py::arg("starve_block") = -1,
      py::call_guard<py::gil_scoped_release>(),
      "launch.cu's generate() with the kernels running on the CPU; seed 0 schedules blocks and threads "
      "in order, any other seed a random schedule drawn from it; starve_block: a block that runs only when "
      "every other block is stuck (a GPU too busy to keep the cooperating blocks running).");

  m.def(
      "condition",
      [](const nvwavenet::CondParams& p, uint64_t seed) {
        nvw::emu::Options options;
        options.seed = seed;
        nvw::emu::set_options(options);
        nvwavenet::gpu::condition_cuda(p);
      },
      py::arg("params"), py::arg("seed") = 0, py::call_guard<py::gil_scoped_release>(),
      "conditioning.cu's condition_cuda() with its kernels running on the CPU (params.workspace: "
      "condition_workspace_bytes(params) of host memory).");
  m.def("condition_workspace_bytes", &nvwavenet::gpu::cuda_condition_workspace_bytes, py::arg("params"));

  m.def("stats", [] {
    const nvw::emu::Stats s = nvw::emu::stats();
    py::dict out;
    out["launches"] = s.launches;
    out["blocks"] = s.blocks;
    out["switches"] = s.switches;
    out["stall_jumps"] = s.stall_jumps;
    return out;
  });
}
