// Per-point bilinear sampling math of the multi-scale deformable attention CPU kernel
// (ms_deform_attn_cpu.cpp): where a sampling point's four corners are, and what one point adds to
// the output (forward) or to grad_value (backward). Plain C++, no torch types.
#pragma once

#include <cmath>
#include <cstdint>

namespace mmdet_deformdetr {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;  // index of the level's first key
};

// Bilinear footprint of one sampling point: four corners (top-left, top-right, bottom-left,
// bottom-right), each the index of a key inside the level (or -1 when the corner lies outside the
// map) and its bilinear weight.
template <typename scalar_t>
struct Footprint {
  int64_t key[4];
  scalar_t weight[4];
  // Fractional parts, kept for the gradient w.r.t. the location.
  scalar_t frac_h, frac_w;
  // All four corners inside the map (the common case): the kernels then take a branch-free path
  // that streams the four rows in one loop. The four keys are distinct (W, H >= 2 then).
  bool interior;
};

// Returns false when no corner can lie inside the map (also for NaN), so callers skip the point.
// The range test keeps floor() of huge coordinates from overflowing int64.
template <typename scalar_t>
inline bool make_footprint(scalar_t loc_x, scalar_t loc_y, const Level& level,
                           Footprint<scalar_t>* fp) {
  const scalar_t w_im = loc_x * static_cast<scalar_t>(level.width) - static_cast<scalar_t>(0.5);
  const scalar_t h_im = loc_y * static_cast<scalar_t>(level.height) - static_cast<scalar_t>(0.5);
  if (!(h_im >= -1 && w_im >= -1 && h_im <= static_cast<scalar_t>(level.height) &&
        w_im <= static_cast<scalar_t>(level.width))) {
    return false;
  }
  const scalar_t h_floor = std::floor(h_im);
  const scalar_t w_floor = std::floor(w_im);
  const int64_t h_low = static_cast<int64_t>(h_floor);
  const int64_t w_low = static_cast<int64_t>(w_floor);
  const scalar_t lh = h_im - h_floor;
  const scalar_t lw = w_im - w_floor;
  const scalar_t hh = 1 - lh;
  const scalar_t hw = 1 - lw;
  fp->frac_h = lh;
  fp->frac_w = lw;
  fp->interior = h_low >= 0 && w_low >= 0 && h_low + 1 < level.height &&
                 w_low + 1 < level.width;
  const int64_t rows[4] = {h_low, h_low, h_low + 1, h_low + 1};
  const int64_t cols[4] = {w_low, w_low + 1, w_low, w_low + 1};
  const scalar_t weights[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
  for (int c = 0; c < 4; ++c) {
    const bool inside = rows[c] >= 0 && rows[c] < level.height && cols[c] >= 0 &&
                        cols[c] < level.width;
    fp->key[c] = inside ? level.start + rows[c] * level.width + cols[c] : -1;
    fp->weight[c] = weights[c];
  }
  return true;
}

// Adds attn * bilinear(value_bm at fp) to out (D numbers); value_bm: (b, m)'s first row.
template <typename scalar_t>
inline void accumulate_point(const Footprint<scalar_t>& fp, scalar_t attn,
                             const scalar_t* value_bm, int64_t key_stride, int64_t head_dims,
                             scalar_t* out) {
  const scalar_t* v[4];
  scalar_t coef[4];
  for (int c = 0; c < 4; ++c) {
    // An out-of-map corner points at key 0, a valid address that is never read: the interior path
    // has no such corner, the border path skips it.
    v[c] = value_bm + (fp.key[c] < 0 ? 0 : fp.key[c]) * key_stride;
    coef[c] = attn * fp.weight[c];
  }
  if (fp.interior) {
#pragma omp simd
    for (int64_t d = 0; d < head_dims; ++d) {
      out[d] += coef[0] * v[0][d] + coef[1] * v[1][d] + coef[2] * v[2][d] + coef[3] * v[3][d];
    }
    return;
  }
  // Border point: skip outside corners instead of multiplying them by 0, so that an inf or NaN in
  // a value cannot leak in through a corner the map does not cover (0 * inf = NaN).
  for (int c = 0; c < 4; ++c) {
    if (fp.key[c] < 0) continue;
#pragma omp simd
    for (int64_t d = 0; d < head_dims; ++d) out[d] += coef[c] * v[c][d];
  }
}

// Backward of one point: adds attn * weight[c] * grad_out to the four grad_value rows and returns
// dot[c] = <grad_out, value row of corner c> (0 outside the map), from which the caller derives
// the gradients of the attention weight and of the location.
template <typename scalar_t>
inline void backward_point(const Footprint<scalar_t>& fp, scalar_t attn, const scalar_t* value_bm,
                           const scalar_t* grad_out, int64_t key_stride, int64_t head_dims,
                           scalar_t* grad_value_bm, scalar_t dot[4]) {
  const scalar_t* v[4];
  scalar_t* gv[4];
  scalar_t coef[4];
  for (int c = 0; c < 4; ++c) {
    const int64_t row = (fp.key[c] < 0 ? 0 : fp.key[c]) * key_stride;
    v[c] = value_bm + row;
    gv[c] = grad_value_bm + row;
    coef[c] = attn * fp.weight[c];
    dot[c] = 0;
  }
  if (fp.interior) {
    // One pass over D for the four (distinct) rows: four independent reductions and updates keep
    // the vector units busy while the rows stream in.
    scalar_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
    for (int64_t d = 0; d < head_dims; ++d) {
      const scalar_t g = grad_out[d];
      dot0 += g * v[0][d];
      dot1 += g * v[1][d];
      dot2 += g * v[2][d];
      dot3 += g * v[3][d];
      gv[0][d] += coef[0] * g;
      gv[1][d] += coef[1] * g;
      gv[2][d] += coef[2] * g;
      gv[3][d] += coef[3] * g;
    }
    dot[0] = dot0;
    dot[1] = dot1;
    dot[2] = dot2;
    dot[3] = dot3;
    return;
  }
  for (int c = 0; c < 4; ++c) {
    if (fp.key[c] < 0) continue;  // outside the map: reads 0, receives nothing
    scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < head_dims; ++d) {
      acc += grad_out[d] * v[c][d];
      gv[c][d] += coef[c] * grad_out[d];
    }
    dot[c] = acc;
  }
}

}  // namespace mmdet_deformdetr
