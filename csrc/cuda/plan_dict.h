// A Plan (api.h) as the dict the Python side reads: one conversion for nvwavenet._C and for the
// host build's module (csrc/cuda/host/module.cpp), so both report the same fields.
#pragma once

#include <pybind11/pybind11.h>

#include "api.h"

namespace nvwavenet::gpu {

inline pybind11::dict plan_dict(const Plan& plan) {
  pybind11::dict out;
  out["runnable"] = plan.runnable;
  out["reason"] = plan.reason;
  out["streams_per_group"] = plan.streams_per_group;
  out["blocks_per_group"] = plan.blocks_per_group;
  out["threads_per_block"] = plan.threads_per_block;
  out["grid_blocks"] = plan.grid_blocks;
  out["shared_bytes"] = plan.shared_bytes;
  out["workspace_bytes"] = plan.workspace_bytes;
  out["co_resident_groups"] = plan.co_resident_groups;
  out["layer_blocks"] = plan.layer_blocks;
  out["head_blocks"] = plan.head_blocks;
  out["max_layers_per_block"] = plan.max_layers_per_block;
  out["skip_blocks"] = plan.skip_blocks;
  out["chain_skip_rows"] = plan.chain_skip_rows;
  return out;
}

}  // namespace nvwavenet::gpu
