// Host build: the thread-block-cluster part of cooperative groups that the kernels use.
#pragma once

#include "../emu.h"

namespace nvw::emu {
int cluster_rank();
int cluster_blocks();
// `local` (this block's shared memory) at the same offset in block `rank` of this cluster.
void* map_shared_rank(const void* local, int rank);
void cluster_sync();
}  // namespace nvw::emu

namespace cooperative_groups {

class cluster_group {
 public:
  unsigned block_rank() const { return unsigned(::nvw::emu::cluster_rank()); }
  unsigned num_blocks() const { return unsigned(::nvw::emu::cluster_blocks()); }
  template <class T>
  T* map_shared_rank(T* local, unsigned rank) const {
    return static_cast<T*>(::nvw::emu::map_shared_rank(local, int(rank)));
  }
  void sync() const { ::nvw::emu::cluster_sync(); }
};

inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
