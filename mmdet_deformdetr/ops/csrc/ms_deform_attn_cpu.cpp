// Multi-scale deformable attention (Zhu et al., ICLR 2021), CPU forward and backward.
//
// Layouts (all contiguous, channel-last):
//   value              (bs, num_keys, M, D)      levels flattened one after another
//   spatial_shapes     (L, 2) int64              (H, W) of each level
//   level_start_index  (L,) int64                first key of each level
//   sampling_locations (bs, nq, M, L, K, 2)      normalised (x, y), (0, 0) = top-left map corner
//   attention_weights  (bs, nq, M, L, K)
//   output             (bs, nq, M * D)
//
// Semantics are those of F.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False):
// pixel coordinates are x * W - 0.5 and y * H - 0.5, and a bilinear corner outside the map reads 0.
//
// Why this is fast:
//  * value is read channel-last, so each bilinear corner is one read of D contiguous numbers
//    (vectorised with `omp simd`); the four bilinear weights are computed once per point and
//    multiplied by the attention weight before touching the D channels; the weighted sum goes
//    straight into the output row. Nothing of size (bs * M, D, nq, L * K) is materialised.
//  * When there are many samples per key (the encoder), value and grad_value are used in a
//    head-major copy (bs, M, num_keys, D), still channel-last: in the caller's layout the rows of
//    one head are M * D apart (1 KiB for M = 8, D = 32 floats), a power-of-two stride that maps
//    them onto few cache sets, which then thrash.
//  * Points fully inside the map (almost all) take a branch-free path over their four corners.
//
// Why the backward does not race: grad_value is scattered to (key, head) rows, and many queries hit
// the same row. Each thread owns a contiguous range of (batch, head) pairs and only writes the
// grad_value rows of those pairs, so no atomics are needed and results do not depend on the number
// of threads. It walks the queries in order for its heads, so grad_output, locations and weights
// are streamed. Parallelism is bs * M units (16 for bs = 2, M = 8).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "bilinear.h"

namespace {

using mmdet_deformdetr::accumulate_point;
using mmdet_deformdetr::backward_point;
using mmdet_deformdetr::Footprint;
using mmdet_deformdetr::Level;
using mmdet_deformdetr::make_footprint;

// Non-finite inputs follow F.grid_sample's zero padding times the attention weight, so
// that this kernel and the reference agree: a NaN/inf location samples NaN, and a point outside
// the map adds 0 * weight, which is NaN for a NaN/inf weight. Points inside the map need nothing
// special (the arithmetic propagates a non-finite weight). The checks run only for points that
// make_footprint rejected (outside the map or non-finite), so the common path is unchanged.
struct NonFinite {
  bool x, y, attn;
  bool all_finite() const { return !(x || y || attn); }
};

template <typename scalar_t>
inline NonFinite non_finite_point(scalar_t loc_x, scalar_t loc_y, scalar_t attn) {
  return {!std::isfinite(loc_x), !std::isfinite(loc_y), !std::isfinite(attn)};
}

// The forward of such a point: NaN in all D channels of the (query, head) row, as grid_sample.
template <typename scalar_t>
inline void poison(int64_t head_dims, scalar_t* out) {
  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
  for (int64_t d = 0; d < head_dims; ++d) out[d] += nan;
}

std::vector<Level> read_levels(const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, int64_t num_keys) {
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "spatial_shapes must be (L, 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == spatial_shapes.size(0),
              "level_start_index must be (L,) with L = ", spatial_shapes.size(0), ", got ",
              level_start_index.sizes());
  const at::Tensor shapes = spatial_shapes.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU, at::kLong).contiguous();
  const int64_t* shape_ptr = shapes.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  std::vector<Level> levels(shapes.size(0));
  int64_t expected_start = 0;
  for (size_t l = 0; l < levels.size(); ++l) {
    levels[l] = {shape_ptr[2 * l], shape_ptr[2 * l + 1], start_ptr[l]};
    // Guards every memory access below: a bad shape must fail here, not read out of bounds.
    TORCH_CHECK(levels[l].height >= 0 && levels[l].width >= 0 && levels[l].start >= 0 &&
                    levels[l].start + levels[l].height * levels[l].width <= num_keys,
                "level ", l, " (H=", levels[l].height, ", W=", levels[l].width,
                ", start=", levels[l].start, ") does not fit in ", num_keys, " keys");
    // An in-bounds but wrong start would silently read another level's values.
    TORCH_CHECK(levels[l].start == expected_start, "level_start_index[", l, "] = ",
                levels[l].start, " disagrees with spatial_shapes: level ", l, " starts at ",
                expected_start, " (cumulative sum of H * W)");
    expected_start += levels[l].height * levels[l].width;
  }
  return levels;
}

void check_inputs(const at::Tensor& value, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights, int64_t num_levels) {
  TORCH_CHECK(value.device().is_cpu() && sampling_locations.device().is_cpu() &&
                  attention_weights.device().is_cpu(),
              "ms_deform_attn_cpu needs CPU tensors");
  TORCH_CHECK(value.dim() == 4, "value must be (bs, num_keys, M, D), got ", value.sizes());
  const int64_t bs = value.size(0), heads = value.size(2);
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == bs &&
                  sampling_locations.size(2) == heads &&
                  sampling_locations.size(3) == num_levels && sampling_locations.size(5) == 2,
              "sampling_locations must be (bs, nq, M, L, K, 2) = (", bs, ", nq, ", heads, ", ",
              num_levels, ", K, 2), got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "attention_weights must be (bs, nq, M, L, K) = ",
              sampling_locations.sizes().slice(0, 5), ", got ", attention_weights.sizes());
  TORCH_CHECK(value.scalar_type() == sampling_locations.scalar_type() &&
                  value.scalar_type() == attention_weights.scalar_type(),
              "value, sampling_locations and attention_weights must share one dtype");
}

// Where the row of (batch b, head m, key n) starts: b * batch + m * head + n * key. Either the
// caller's (bs, num_keys, M, D) layout or a head-major (bs, M, num_keys, D) copy; D is contiguous.
struct ValueLayout {
  int64_t batch, head, key;
};

ValueLayout make_layout(bool head_major, int64_t num_keys, int64_t num_heads, int64_t head_dims) {
  if (head_major) return {num_heads * num_keys * head_dims, num_keys * head_dims, head_dims};
  return {num_keys * num_heads * head_dims, head_dims, num_heads * head_dims};
}

// Validated, contiguous inputs and their sizes, shared by both passes.
struct Problem {
  std::vector<Level> levels;
  at::Tensor value;  // the caller's layout or the head-major copy, see `layout`
  at::Tensor locations, weights;
  bool head_major;
  ValueLayout layout;
  int64_t bs, num_keys, num_queries, num_heads, num_levels, num_points, head_dims;
};

// kHeadDims > 0 fixes D at compile time (16, 32, 64): the D loops then unroll completely.
// kHeadDims == 0 is the generic runtime-D version.
template <typename scalar_t, int64_t kHeadDims>
void forward_impl(const Problem& pb, scalar_t* output) {
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : pb.head_dims;
  const int64_t num_heads = pb.num_heads, num_queries = pb.num_queries;
  const int64_t num_levels = pb.num_levels, num_points = pb.num_points;
  const int64_t points_per_head = num_levels * num_points;
  const ValueLayout layout = pb.layout;
  const scalar_t* value = pb.value.data_ptr<scalar_t>();
  const scalar_t* sampling_locations = pb.locations.data_ptr<scalar_t>();
  const scalar_t* attention_weights = pb.weights.data_ptr<scalar_t>();
  // Work unit: one (batch, query) pair, all heads; locations, weights and output are streamed.
  at::parallel_for(0, pb.bs * num_queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / num_queries;
      for (int64_t m = 0; m < num_heads; ++m) {
        const int64_t head_row = bq * num_heads + m;  // row of (bs, nq, M)
        const scalar_t* value_bm = value + b * layout.batch + m * layout.head;
        const scalar_t* loc = sampling_locations + head_row * points_per_head * 2;
        const scalar_t* attn = attention_weights + head_row * points_per_head;
        scalar_t* out = output + head_row * head_dims;
        for (int64_t d = 0; d < head_dims; ++d) out[d] = 0;
        for (int64_t l = 0; l < num_levels; ++l) {
          for (int64_t k = 0; k < num_points; ++k) {
            const int64_t p = l * num_points + k;
            Footprint<scalar_t> fp;
            if (make_footprint(loc[2 * p], loc[2 * p + 1], pb.levels[l], &fp)) {
              accumulate_point(fp, attn[p], value_bm, layout.key, head_dims, out);
            } else if (!non_finite_point(loc[2 * p], loc[2 * p + 1], attn[p]).all_finite()) {
              poison(head_dims, out);
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t, int64_t kHeadDims>
void backward_impl(const Problem& pb, const scalar_t* grad_output, scalar_t* grad_value,
                   scalar_t* grad_sampling_locations, scalar_t* grad_attention_weights) {
  const int64_t head_dims = kHeadDims > 0 ? kHeadDims : pb.head_dims;
  const int64_t num_heads = pb.num_heads, num_queries = pb.num_queries;
  const int64_t num_levels = pb.num_levels, num_points = pb.num_points;
  const ValueLayout layout = pb.layout;
  const scalar_t* value = pb.value.data_ptr<scalar_t>();
  const scalar_t* sampling_locations = pb.locations.data_ptr<scalar_t>();
  const scalar_t* attention_weights = pb.weights.data_ptr<scalar_t>();
  // A thread gets the (batch, head) pairs [begin, end) and owns their grad_value rows.
  at::parallel_for(0, pb.bs * num_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin / num_heads; b * num_heads < end; ++b) {
      const int64_t m_begin = std::max<int64_t>(begin - b * num_heads, 0);
      const int64_t m_end = std::min<int64_t>(end - b * num_heads, num_heads);
      for (int64_t q = 0; q < num_queries; ++q) {
        for (int64_t m = m_begin; m < m_end; ++m) {
          const int64_t head_row = (b * num_queries + q) * num_heads + m;  // row of (bs, nq, M)
          const int64_t first_row = b * layout.batch + m * layout.head;
          const scalar_t* grad_out = grad_output + head_row * head_dims;
          for (int64_t l = 0; l < num_levels; ++l) {
            const Level& level = pb.levels[l];
            for (int64_t k = 0; k < num_points; ++k) {
              const int64_t p = (head_row * num_levels + l) * num_points + k;
              Footprint<scalar_t> fp;
              const scalar_t loc_x = sampling_locations[2 * p];
              const scalar_t loc_y = sampling_locations[2 * p + 1];
              if (!make_footprint(loc_x, loc_y, level, &fp)) {
                // Outside the map every corner reads 0: all three gradients stay 0, unless an
                // input is not finite (then NaN exactly where grid_sample puts it).
                const NonFinite bad = non_finite_point(loc_x, loc_y, attention_weights[p]);
                if (!bad.all_finite()) {
                  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
                  if (bad.x || bad.y) grad_attention_weights[p] = nan;
                  if (bad.y || bad.attn) grad_sampling_locations[2 * p] = nan;
                  if (bad.x || bad.attn) grad_sampling_locations[2 * p + 1] = nan;
                }
                continue;
              }
              const scalar_t attn = attention_weights[p];
              scalar_t dot[4];
              backward_point(fp, attn, value + first_row, grad_out, layout.key, head_dims,
                             grad_value + first_row, dot);
              grad_attention_weights[p] = fp.weight[0] * dot[0] + fp.weight[1] * dot[1] +
                                          fp.weight[2] * dot[2] + fp.weight[3] * dot[3];
              // Derivatives of the bilinear weights w.r.t. the fractional coordinates; the chain
              // rule through w_im = x * W - 0.5 (resp. h) contributes the factor W (resp. H).
              const scalar_t lh = fp.frac_h, lw = fp.frac_w;
              const scalar_t d_lw = (1 - lh) * (dot[1] - dot[0]) + lh * (dot[3] - dot[2]);
              const scalar_t d_lh = (1 - lw) * (dot[2] - dot[0]) + lw * (dot[3] - dot[1]);
              grad_sampling_locations[2 * p] = attn * static_cast<scalar_t>(level.width) * d_lw;
              grad_sampling_locations[2 * p + 1] =
                  attn * static_cast<scalar_t>(level.height) * d_lh;
            }
          }
        }
      }
    }
  });
}

// Calls body(std::integral_constant<int64_t, D>) for the usual head sizes, else with 0 (runtime D).
template <typename Body>
void dispatch_head_dims(int64_t head_dims, const Body& body) {
  switch (head_dims) {
    case 32: body(std::integral_constant<int64_t, 32>()); break;
    case 64: body(std::integral_constant<int64_t, 64>()); break;
    case 16: body(std::integral_constant<int64_t, 16>()); break;
    default: body(std::integral_constant<int64_t, 0>()); break;
  }
}

// The head-major copy of value (see the file comment) costs a few ms on the benchmark shapes and
// saved 10-15% of the encoder's passes; it only pays off when there are many samples per key (the
// encoder), not for 300 decoder queries reading a 20k-key map.
bool use_head_major(int64_t num_keys, int64_t num_queries, int64_t num_levels,
                    int64_t num_points) {
  return num_queries * num_levels * num_points >= num_keys;
}

// (bs, n, M, D) <-> (bs, M, n, D), contiguous.
at::Tensor swap_keys_and_heads(const at::Tensor& tensor) {
  return tensor.permute({0, 2, 1, 3}).contiguous();
}

Problem prepare(const at::Tensor& value, const at::Tensor& spatial_shapes,
                const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                const at::Tensor& attention_weights) {
  check_inputs(value, sampling_locations, attention_weights, spatial_shapes.size(0));
  Problem pb;
  pb.levels = read_levels(spatial_shapes, level_start_index, value.size(1));
  pb.locations = sampling_locations.contiguous();
  pb.weights = attention_weights.contiguous();
  pb.bs = value.size(0);
  pb.num_keys = value.size(1);
  pb.num_heads = value.size(2);
  pb.head_dims = value.size(3);
  pb.num_queries = pb.locations.size(1);
  pb.num_levels = pb.locations.size(3);
  pb.num_points = pb.locations.size(4);
  pb.head_major = use_head_major(pb.num_keys, pb.num_queries, pb.num_levels, pb.num_points);
  pb.value = pb.head_major ? swap_keys_and_heads(value) : value.contiguous();
  pb.layout = make_layout(pb.head_major, pb.num_keys, pb.num_heads, pb.head_dims);
  return pb;
}

}  // namespace

at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const Problem pb = prepare(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights);
  at::Tensor output =
      at::empty({pb.bs, pb.num_queries, pb.num_heads * pb.head_dims}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    dispatch_head_dims(pb.head_dims, [&](auto fixed_dims) {
      forward_impl<scalar_t, decltype(fixed_dims)::value>(pb, output.data_ptr<scalar_t>());
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cpu_backward(const at::Tensor& value,
                                                    const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_locations,
                                                    const at::Tensor& attention_weights,
                                                    const at::Tensor& grad_output) {
  const Problem pb = prepare(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights);
  TORCH_CHECK(grad_output.numel() == pb.bs * pb.num_queries * pb.num_heads * pb.head_dims,
              "grad_output must have shape (bs, nq, M * D), got ", grad_output.sizes());
  const at::Tensor grad_output_c = grad_output.to(value.scalar_type()).contiguous();
  at::Tensor grad_value = at::zeros_like(pb.value);
  at::Tensor grad_loc = at::zeros_like(pb.locations);
  at::Tensor grad_attn = at::zeros_like(pb.weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    dispatch_head_dims(pb.head_dims, [&](auto fixed_dims) {
      backward_impl<scalar_t, decltype(fixed_dims)::value>(
          pb, grad_output_c.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
          grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>());
    });
  });
  // In the caller's (bs, num_keys, M, D) layout.
  return {pb.head_major ? swap_keys_and_heads(grad_value) : grad_value, grad_loc, grad_attn};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ms_deform_attn_cpu_forward, "multi-scale deformable attention forward (CPU)");
  m.def("backward", &ms_deform_attn_cpu_backward,
        "multi-scale deformable attention backward (CPU): grad value, locations, weights");
}
