// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file attn.hpp
/// The umbrella header: everything attn offers.

#include "block_map.hpp"
#include "builtin_masks.hpp"
#include "cross_attention.hpp"
#include "error.hpp"
#include "gradients.hpp"
#include "kv_cache.hpp"
#include "mask.hpp"
#include "multi_head.hpp"
#include "paged_kv_cache.hpp"
#include "paged_view.hpp"
#include "parallel.hpp"
#include "partial_attention.hpp"
#include "rotary.hpp"
#include "scaled_dot_product.hpp"
#include "score_mask.hpp"
#include "self_attention.hpp"
#include "simd.hpp"
#include "storage.hpp"
#include "training.hpp"
#include "types.hpp"
#include "version.hpp"
#include "workspace.hpp"
