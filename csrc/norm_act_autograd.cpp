// torch.ops.fastgan.norm_act: the fused normalize + affine + activation of the norm family with its
// autograd in C++ (first and second derivatives), the CUDA backend's twin of the Python Functions
// in fastgan/ops/_norm_act.py (NormActFn, NormActBackwardFn; the math is documented there).
//
//   norm_act(x, weight?, bias?, mean, invstd, scale, shift, groups, batch_stats, act, slope, upscale=1) -> y
//   norm_act_stats(x, weight?, bias?, running_mean?, running_var?, momentum, eps, groups, per_sample, act, slope,
//                  upscale=1, segments=1)
//       -> y     the batch's statistics (channel_stats_affine / row_stats_affine; with segments T > 1
//                segment_stats and stats_affine: batch norm per part of the batch), then norm_act, in one call
//
// y = act(x * scale + shift), scale / shift being the affine tables of (mean, invstd, weight, bias);
// (C,) vectors (batch norm) or (N, C) tables (group / instance / layer norm), groups and upscale as in
// fastgan/ops/_norm_act.py's Grouping.  weight and bias are None or (C,) vectors; with constant
// statistics (batch_stats false) also (N, C) tables like scale's (virtual batch norm's affine tables:
// autograd carries their derivatives into its statistics).  With upscale r > 1 (pixel shuffle,
// y has C / r^2 channels) every table is per *output* channel, (C / r^2,): the op repeats them over
// each output channel's r^2 input channels for the kernels, and sums weight / bias gradients back,
// inside the op and below autograd (the Python Functions' path does the same with repeat_interleave,
// whose autograd nodes cost a pixel-shuffle layer about twice its host time).
//
// Why C++: at GAN batch sizes a training step is bound by the host issuing work, and the Python
// Functions cost a fused layer about twice the host time of eager's batch_norm + leaky_relu.  Here
// one op call does the forward, and the backward -- run by autograd's engine -- never enters Python.
// The Functions call the kernels' ops (csrc/batch_norm_act.cpp, double_coefficients.cpp) through the
// dispatcher, below autograd, so fake tensors, torch.compile's tracing and CUDA graph capture see the
// same ops as they do on the Python path.
#include <cstdint>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Optional.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "check.h"

// The namespace the ops are looked up in (the tests' CPU emulator builds these sources as fastgan_emu).
#define FASTGAN_OPS_NAMESPACE "fastgan"

namespace fastgan {
namespace {

using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kThirdOrderMessage =
    "fastgan's fused ops support first and second derivatives only; a third-order derivative was requested "
    "(use impl='ref' for higher orders)";

template <class Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  const std::string qualified = std::string(FASTGAN_OPS_NAMESPACE "::") + name;
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "").typed<Signature>();
}

// ---------------------------------------------------------------------------- the kernels' ops

Tensor forward_op(const Tensor& x, const Tensor& scale, const Tensor& shift, int64_t act, double slope,
                  int64_t upscale) {
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, double, int64_t)>(
      "norm_act_forward");
  return op.call(x, scale, shift, act, slope, upscale);
}

using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using CT = const Tensor&;
using OptT = const optional<Tensor>&;

// Each entry of t's last dim repeated `times` times in place ([a, b] -> [a, a, b, b]): repeat_interleave,
// written as a copy of a broadcast view so that it is one kernel and never reads a size back from the GPU.
Tensor repeat_each(const Tensor& t, int64_t times) {
  std::vector<int64_t> expanded(t.sizes().begin(), t.sizes().end()), out(expanded);
  expanded.push_back(times);
  out.back() *= times;
  // (clone, then view: a reshape that copies would look like a view to an op counter)
  return t.unsqueeze(-1).expand(expanded).clone(at::MemoryFormat::Contiguous).view(out);
}

// The statistics and per-call settings every pass takes.
struct Problem {
  Tensor x, weight, bias, mean, invstd, scale, shift;  // weight, bias may be undefined
  int64_t groups, act, upscale;
  bool batch_stats;
  double slope;
  // Input channels per weight / bias entry: r^2 with upscale r (per-output-channel parameters; mean,
  // invstd, scale, shift here are already repeated to x's channels), else 1.
  int64_t repeat = 1;

  // A (C / repeat,) parameter-shaped tensor as the kernels take it, (C,): each entry repeated.
  Tensor to_kernel(const Tensor& t) const { return repeat == 1 || !t.defined() ? t : repeat_each(t, repeat); }
  // A (C,) gradient from the kernels back to the parameters' shape: each output channel's sum.
  Tensor to_param(const Tensor& t) const { return repeat == 1 ? t : t.view({-1, repeat}).sum(1); }

  // Elements per statistics group (Grouping.group_size): per (n, group) with (N, C) tables, per
  // (segment, group) with (T, C) tables (T segments of N / T samples), else per group over the batch.
  int64_t group_size() const {
    const int64_t n = x.size(0), c = x.size(1);
    const int64_t rows = n * c;
    const int64_t spatial = rows > 0 ? x.numel() / rows : 0;
    const int64_t per_group = (c / groups) * spatial;
    const int64_t segments = scale.dim() == 2 ? scale.size(0) : 1;
    return segments > 0 ? (n / segments) * per_group : 0;
  }
};

// A per-(n, c) table summed to a weight / bias's (C,) shape (sum_to_param); kept per (n, c) for an
// (N, C) parameter table.
Tensor to_channels(const Tensor& t, const Tensor& param = Tensor()) {
  return t.dim() == 2 && (!param.defined() || param.dim() == 1) ? t.sum(0) : t;
}

// t with exactly x's strides (fastgan/ops/_layout.py's like()), copied only when they differ.
Tensor like(const Tensor& t, const Tensor& x) {
  if (t.strides() == x.strides()) return t;
  return at::empty_like(x, x.options().dtype(t.scalar_type())).copy_(t);
}

// gy as the kernels read it: x's layout, or contiguous pixel-shuffled (upscale > 1).
Tensor y_layout(const Tensor& gy, const Problem& p) { return p.upscale == 1 ? like(gy, p.x) : gy.contiguous(); }

// (dx, dw, db) from gy in y_layout: one reduction (with its coefficients when the statistics are
// the batch's), one elementwise pass.  dw, db in the statistics' dtype, (C,).
std::tuple<Tensor, Tensor, Tensor> backward_impl(const Tensor& gy, const Problem& p) {
  static const auto reduce_coefficients =
      op_handle<Tensor6(CT, CT, CT, CT, CT, CT, int64_t, double, int64_t, int64_t, int64_t)>(
          "norm_act_backward_reduce_coefficients");
  static const auto reduce =
      op_handle<Tensor2(CT, CT, CT, CT, CT, CT, int64_t, double, int64_t)>("norm_act_backward_reduce");
  static const auto apply = op_handle<Tensor(CT, CT, CT, CT, CT, CT, CT, CT, CT, int64_t, double, int64_t)>(
      "norm_act_backward_apply");
  Tensor dw, db, k2, k3;
  if (p.batch_stats) {
    auto [r_g, r_gx, k2_, k3_, sum_g, sum_gx] = reduce_coefficients.call(
        gy, p.x, p.scale, p.shift, p.mean, p.invstd, p.act, p.slope, p.groups, p.group_size(), p.upscale);
    dw = r_gx.dim() == 2 ? sum_gx : r_gx;
    db = r_g.dim() == 2 ? sum_g : r_g;
    k2 = k2_;
    k3 = k3_;
  } else {  // constant statistics: their terms vanish
    auto [r_g, r_gx] = reduce.call(gy, p.x, p.scale, p.shift, p.mean, p.invstd, p.act, p.slope, p.upscale);
    dw = to_channels(r_gx, p.weight);
    db = to_channels(r_g, p.bias);
    k2 = k3 = at::zeros_like(p.scale);
  }
  Tensor dx = apply.call(gy, p.x, p.scale, p.shift, p.mean, p.invstd, p.scale, k2, k3, p.act, p.slope, p.upscale);
  // (folded only for the parameters given: the others' sums are not used)
  return {dx, p.weight.defined() ? p.to_param(dw) : dw, p.bias.defined() ? p.to_param(db) : db};
}

optional<Tensor> as_table(const Tensor& t, at::ScalarType dtype) {
  if (!t.defined()) return std::nullopt;
  return t.to(dtype).contiguous();
}

// The double backward (u, alpha, beta: grads wrt dx, dw, db; any may be undefined) -> (ggy, ggx,
// grad wrt weight): five sums, their coefficients, one elementwise pass (NormActBackwardFn's).
std::tuple<Tensor, Tensor, Tensor> double_impl(const Tensor& u_in, const Tensor& alpha, const Tensor& beta,
                                               const Tensor& gy, const Problem& p) {
  static const auto reduce = op_handle<Tensor5(CT, CT, CT, CT, CT, CT, CT, int64_t, double, int64_t)>(
      "norm_act_double_reduce");
  static const auto coefficients =
      op_handle<Tensor7(CT, CT, CT, CT, CT, OptT, CT, OptT, OptT, int64_t, int64_t, bool)>(
          "norm_act_double_coefficients");
  static const auto apply = op_handle<Tensor2(CT, CT, CT, CT, CT, CT, CT, CT, CT, CT, CT, CT, CT, CT, int64_t,
                                              double, int64_t)>("norm_act_double_apply");
  const Tensor u = u_in.defined() ? like(u_in, p.x) : at::zeros_like(p.x);
  auto [r_g, r_gx, r_u, r_ux, r_gu] =
      reduce.call(u, gy, p.x, p.scale, p.shift, p.mean, p.invstd, p.act, p.slope, p.upscale);
  const auto dtype = p.invstd.scalar_type();
  Tensor a2, a3, b1, b2, b3, b4, grad_w;
  const auto vector = [](const Tensor& t) { return !t.defined() || t.dim() == 1; };
  const int64_t rows = p.invstd.dim() == 2 ? p.invstd.size(0) : 1;
  if (vector(p.weight) && vector(alpha) && vector(beta) && rows <= 65535) {
    std::tie(a2, a3, b1, b2, b3, b4, grad_w) = coefficients.call(
        r_g.contiguous(), r_gx.contiguous(), r_u.contiguous(), r_ux.contiguous(), r_gu.contiguous(),
        as_table(p.to_kernel(p.weight), dtype), p.invstd.contiguous(), as_table(p.to_kernel(alpha), dtype),
        as_table(p.to_kernel(beta), dtype), p.groups, p.group_size(), p.batch_stats);
  } else {
    // (N, C) parameter tables (or more rows than the kernel takes) with constant statistics: their
    // coefficients are a few products (fastgan.reference.norm_act_double.double_coefficients, whose
    // operations these are, in its order, so the two paths agree to the bit)
    FASTGAN_CHECK(!p.batch_stats, "fastgan::norm_act: per-sample parameter tables need constant statistics");
    const Tensor& r = p.invstd;
    const Tensor zero = at::zeros_like(r);
    const Tensor a = alpha.defined() ? alpha.to(dtype).add(zero) : zero;
    a2 = beta.defined() ? beta.to(dtype).add(zero) : zero;
    a3 = a;
    b1 = a.mul(r);
    b2 = b3 = b4 = zero;
    grad_w = r.mul(r_gu);
  }
  auto [ggx, ggy] = apply.call(u, gy, p.x, p.scale, p.shift, p.mean, p.invstd, p.scale, a2, a3, b1, b2, b3, b4,
                               p.act, p.slope, p.upscale);
  return {ggy, ggx, p.to_param(to_channels(grad_w, p.weight))};
}

// ---------------------------------------------------------------------------- the autograd nodes
//
// The forward's node is a plain autograd Node, as PyTorch's own ops make them: saved variables and
// settings as members.  A torch::autograd::Function (a CppNode) costs about as much host time again
// (a context with a string-keyed map, a std::function, vectors of variable info) and this node is
// made in every fused layer's forward.  The differentiable backward and the double backward, made
// only under create_graph, are Functions.

Tensor as_dtype_of(const Tensor& t, const Tensor& like) {
  return t.scalar_type() == like.scalar_type() ? t : t.to(like.scalar_type());
}

// Optional tensors travel into Function::apply as std::optional: an undefined Tensor there would be
// taken for a variable (and fail), while std::nullopt is skipped.  So the edge of a tensor input
// -- what needs_input_grad() indexes -- counts only the tensors given.
optional<Tensor> given(const Tensor& t) { return t.defined() ? optional<Tensor>(t) : std::nullopt; }
Tensor value(const optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

void save_settings(AutogradContext* ctx, const Problem& p) {
  ctx->saved_data["groups"] = p.groups;
  ctx->saved_data["act"] = p.act;
  ctx->saved_data["upscale"] = p.upscale;
  ctx->saved_data["batch_stats"] = p.batch_stats;
  ctx->saved_data["slope"] = p.slope;
  ctx->saved_data["repeat"] = p.repeat;
}

// The last derivative: computes the double backward; differentiating it again raises (a node whose
// inputs are the real ones, so no path to them is silently pruned; see fastgan/ops/_autograd.py).
struct NormActGradGrad : public torch::autograd::Function<NormActGradGrad> {
  static variable_list forward(AutogradContext* ctx, OptT u, OptT alpha, OptT beta, CT gy, CT x, OptT weight,
                               OptT bias, CT mean, CT invstd, CT scale, CT shift, int64_t groups, bool batch_stats,
                               int64_t act, double slope, int64_t upscale, int64_t repeat) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Problem p{x, value(weight), value(bias), mean, invstd, scale, shift, groups, act, upscale, batch_stats,
                    slope, repeat};
    auto [ggy, ggx, grad_w] = double_impl(value(u), value(alpha), value(beta), gy, p);
    return {ggy, ggx, grad_w};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    FASTGAN_CHECK(false, kThirdOrderMessage);
    return {};
  }
};

// (gy, x, weight, bias) -> (dx, dw, db), differentiable once more: the backward under create_graph.
struct NormActGrad : public torch::autograd::Function<NormActGrad> {
  static variable_list forward(AutogradContext* ctx, CT gy, CT x, OptT weight, OptT bias, CT mean, CT invstd,
                               CT scale, CT shift, int64_t groups, bool batch_stats, int64_t act, double slope,
                               int64_t upscale, int64_t repeat) {
    // unused outputs (a gradient penalty differentiates dx only) arrive undefined, not as zeros
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Problem p{x, value(weight), value(bias), mean, invstd, scale, shift, groups, act, upscale, batch_stats,
                    slope, repeat};
    const Tensor gy_layout = y_layout(gy, p);
    auto [dx, dw, db] = backward_impl(gy_layout, p);
    ctx->save_for_backward({gy_layout, p.x, p.weight, p.bias, p.mean, p.invstd, p.scale, p.shift});
    save_settings(ctx, p);
    return {dx, dw, db};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    const Tensor& gy = s[0];
    const Problem p{s[1], s[2], s[3], s[4], s[5], s[6], s[7], d["groups"].toInt(), d["act"].toInt(),
                    d["upscale"].toInt(), d["batch_stats"].toBool(), d["slope"].toDouble(), d["repeat"].toInt()};
    Tensor ggy, ggx, grad_w;
    if (at::GradMode::is_enabled()) {  // create_graph: the result must refuse a third derivative
      auto out = NormActGradGrad::apply(given(grads[0]), given(grads[1]), given(grads[2]), gy, p.x, given(p.weight),
                                        given(p.bias), p.mean, p.invstd, p.scale, p.shift, p.groups, p.batch_stats,
                                        p.act, p.slope, p.upscale, p.repeat);
      ggy = out[0], ggx = out[1], grad_w = out[2];
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(ggy, ggx, grad_w) = double_impl(grads[0], grads[1], grads[2], gy, p);
    }
    // edges: gy, x, then weight and bias when given
    const bool need_w = p.weight.defined() && ctx->needs_input_grad(2);
    // bias only moves the activation's kink: its second derivative is zero almost everywhere
    const bool need_b = p.bias.defined() && ctx->needs_input_grad(p.weight.defined() ? 3 : 2);
    return {ggy, ggx, need_w ? as_dtype_of(grad_w, p.weight) : Tensor(), need_b ? at::zeros_like(p.bias) : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The forward's node: edges to x, weight, bias (an undefined tensor's edge is invalid).
struct NormActBackward : public torch::autograd::Node {
  using SavedVariable = torch::autograd::SavedVariable;
  SavedVariable x_, weight_, bias_, mean_, invstd_, scale_, shift_;
  int64_t groups = 1, act = 0, upscale = 1, repeat = 1;
  bool batch_stats = true;
  double slope = 0.0;

  std::string name() const override { return "fastgan::NormActBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : {&x_, &weight_, &bias_, &mean_, &invstd_, &scale_, &shift_}) v->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(3);
    if (!grads[0].defined()) return out;
    // the saved tensors are this node's inputs, not its outputs: unpacked without it
    const Problem p{x_.unpack(), weight_.unpack(), bias_.unpack(), mean_.unpack(), invstd_.unpack(),
                    scale_.unpack(), shift_.unpack(), groups, act, upscale, batch_stats, slope, repeat};
    Tensor dx, dw, db;
    if (at::GradMode::is_enabled()) {  // create_graph (a gradient penalty): a differentiable backward
      auto r = NormActGrad::apply(grads[0], p.x, given(p.weight), given(p.bias), p.mean, p.invstd, p.scale, p.shift,
                                  p.groups, p.batch_stats, p.act, p.slope, p.upscale, p.repeat);
      dx = r[0], dw = r[1], db = r[2];
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(dx, dw, db) = backward_impl(y_layout(grads[0], p), p);
    }
    if (task_should_compute_output(0)) out[0] = dx;
    if (p.weight.defined() && task_should_compute_output(1)) out[1] = as_dtype_of(dw, p.weight);
    if (p.bias.defined() && task_should_compute_output(2)) out[2] = as_dtype_of(db, p.bias);
    return out;
  }
};

// ---------------------------------------------------------------------------- the op's kernels

// weight and bias: None, (C,) vectors, or -- with constant statistics (batch_stats false) -- tables of
// the affine tables' shape ((N, C): virtual batch norm's).  ``tables``: scale; undefined for
// norm_act_stats (vectors only).
void check_params(const char* op, const optional<Tensor>& weight, const optional<Tensor>& bias,
                  const Tensor& tables = Tensor(), bool batch_stats = true) {
  const bool per_sample_ok = tables.defined() && !batch_stats && tables.dim() == 2;
  for (const auto* t : {&weight, &bias}) {
    if (!t->has_value() || !(*t)->defined() || (*t)->dim() == 1) continue;
    FASTGAN_CHECK_VALUE(per_sample_ok && (*t)->sizes() == tables.sizes(), op, ": ", t == &weight ? "weight" : "bias",
                        " must be None or a (C,) vector", per_sample_ok ? " or a table shaped like scale" : "",
                        per_sample_ok ? "" : " (per-sample tables: with constant statistics only)", ", got shape ",
                        (*t)->sizes());
  }
}

// A new node, held the way this torch's autograd holds nodes: std::shared_ptr up to torch 2.1x,
// c10::intrusive_ptr since (an Edge's `function` member says which).
template <class NodeType>
auto make_node() {
  using Held = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<Held, std::shared_ptr<torch::autograd::Node>>) {
    return std::shared_ptr<NodeType>(new NodeType());
  } else {
    return c10::make_intrusive<NodeType>();
  }
}

// mean, invstd, scale, shift as the kernels take them: with upscale r > 1 the per-output-channel
// tables repeated over their r^2 input channels (one (4, C) table, two launches); and the repeat.
struct KernelTables {
  Tensor mean, invstd, scale, shift;
  int64_t repeat;
};

// x's shape for upscale (the kernels check the rest, e.g. its layout).
void check_upscale(const Tensor& x, int64_t upscale) {
  FASTGAN_CHECK_VALUE(upscale >= 1, "fastgan::norm_act: upscale must be a positive int, got ", upscale);
  FASTGAN_CHECK_VALUE(upscale == 1 || (x.dim() == 4 && x.size(1) % (upscale * upscale) == 0),
                      "fastgan::norm_act: upscale = ", upscale,
                      " (pixel shuffle) needs x of shape (N, C, H, W) with C divisible by upscale^2 = ",
                      upscale * upscale, ", got shape ", x.sizes());
}

KernelTables kernel_tables(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& mean,
                           const Tensor& invstd, const Tensor& scale, const Tensor& shift, int64_t upscale) {
  check_upscale(x, upscale);
  if (upscale == 1) return {mean, invstd, scale, shift, 1};
  const int64_t r2 = upscale * upscale;
  const int64_t out_channels = x.size(1) / r2;
  const char* names[] = {"weight", "bias", "mean", "invstd", "scale", "shift"};
  const Tensor* tables[] = {&w, &b, &mean, &invstd, &scale, &shift};
  for (int i = 0; i < 6; ++i) {
    const Tensor& t = *tables[i];
    FASTGAN_CHECK_VALUE(!t.defined() || (t.dim() == 1 && t.size(0) == out_channels),
                        "fastgan::norm_act: with upscale = ", upscale, " the tables are per output channel: ",
                        names[i], " must be a (C / upscale^2,) = (", out_channels, ",) vector, got shape ",
                        t.sizes());
    FASTGAN_CHECK_VALUE(i < 2 || t.scalar_type() == mean.scalar_type(), "fastgan::norm_act: ", names[i],
                        " must have mean's dtype ", mean.scalar_type(), ", got ", t.scalar_type());
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor all = repeat_each(at::stack({mean, invstd, scale, shift}), r2);
  return {all[0], all[1], all[2], all[3], r2};
}

// The forward kernel, and its node when an input needs a gradient (and grad mode is on).  mean, invstd,
// scale, shift as the kernels take them (kernel_tables); weight and bias as given (repeat: see Problem).
Tensor record_norm_act(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& mean, const Tensor& invstd,
                       const Tensor& scale, const Tensor& shift, int64_t groups, bool batch_stats, int64_t act,
                       double slope, int64_t upscale, int64_t repeat) {
  decltype(make_node<NormActBackward>()) node;
  if (torch::autograd::compute_requires_grad(x, w, b)) {
    node = make_node<NormActBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, w, b));
  }
  Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = forward_op(x, scale, shift, act, slope, upscale);
  }
  if (node) {
    using torch::autograd::SavedVariable;
    node->x_ = SavedVariable(x, false);
    node->weight_ = SavedVariable(w, false);
    node->bias_ = SavedVariable(b, false);
    node->mean_ = SavedVariable(mean, false);
    node->invstd_ = SavedVariable(invstd, false);
    node->scale_ = SavedVariable(scale, false);
    node->shift_ = SavedVariable(shift, false);
    node->groups = groups;
    node->act = act;
    node->upscale = upscale;
    node->repeat = repeat;
    node->batch_stats = batch_stats;
    node->slope = slope;
    torch::autograd::set_history(y, node);
  }
  return y;
}

// Autograd kernel of norm_act.
Tensor norm_act_autograd(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                         const Tensor& mean, const Tensor& invstd, const Tensor& scale, const Tensor& shift,
                         int64_t groups, bool batch_stats, int64_t act, double slope, int64_t upscale) {
  check_params("fastgan::norm_act", weight, bias, scale, batch_stats);
  const Tensor w = value(weight), b = value(bias);
  const KernelTables k = kernel_tables(x, w, b, mean, invstd, scale, shift, upscale);
  return record_norm_act(x, w, b, k.mean, k.invstd, k.scale, k.shift, groups, batch_stats, act, slope, upscale,
                         k.repeat);
}

// Below autograd (inference mode, or no input needing grad in a traced graph): the forward kernel.
Tensor norm_act_forward_only(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                             const Tensor& mean, const Tensor& invstd, const Tensor& scale, const Tensor& shift,
                             int64_t groups, bool batch_stats, int64_t act, double slope, int64_t upscale) {
  check_params("fastgan::norm_act", weight, bias, scale, batch_stats);
  const KernelTables k = kernel_tables(x, value(weight), value(bias), mean, invstd, scale, shift, upscale);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return forward_op(x, k.scale, k.shift, act, slope, upscale);
}

// ---------------------------------------------------------------------------- norm_act_stats
//
// The batch's statistics and the fused forward in one op call (a training-mode batch norm, or a
// group / instance / layer norm without running stats): the statistics op of csrc/batch_norm_act.cpp
// (channel_stats_affine, updating the running stats in place; or row_stats_affine per sample), then
// norm_act's.  One call from Python instead of two, and none of the Python glue between them.

// mean, invstd, scale, shift of x's batch (per_sample: (N, C) tables over groups of C / groups channels;
// segments T > 1: (T, C) tables of T equal parts of the batch, the running stats updated once per part).
// upscale r > 1 (pixel shuffle, per output channel): an output channel's values are its r^2 input
// channels, next to each other in a contiguous x, so x seen as (N, C / r^2, r^2 H W) has them as
// plain per-channel statistics.
std::tuple<Tensor, Tensor, Tensor, Tensor> batch_statistics(const Tensor& x_in, const Tensor& w, const Tensor& b,
                                                            const optional<Tensor>& running_mean,
                                                            const optional<Tensor>& running_var, double momentum,
                                                            double eps, int64_t groups, bool per_sample,
                                                            int64_t upscale, int64_t segments) {
  check_upscale(x_in, upscale);
  FASTGAN_CHECK_VALUE(upscale == 1 || (!per_sample && x_in.is_contiguous()), "fastgan::norm_act_stats: upscale = ",
                      upscale, " takes batch statistics of a contiguous x, got per_sample = ", per_sample,
                      " and x's strides ", x_in.strides());
  FASTGAN_CHECK_VALUE(segments == 1 || (!per_sample && upscale == 1 && groups == x_in.size(1)),
                      "fastgan::norm_act_stats: segments = ", segments, " takes batch norm's per-channel "
                      "statistics (per_sample false, upscale 1, groups = C), got per_sample = ", per_sample,
                      ", upscale = ", upscale, ", groups = ", groups);
  const Tensor x = upscale == 1 ? x_in : x_in.view({x_in.size(0), x_in.size(1) / (upscale * upscale), -1});
  static const auto channel_stats_affine =
      op_handle<Tensor5(CT, OptT, OptT, const optional<Tensor>&, const optional<Tensor>&, double, double)>(
          "channel_stats_affine");
  static const auto row_stats_affine =
      op_handle<std::tuple<Tensor, Tensor, Tensor, Tensor>(CT, OptT, OptT, int64_t, double)>("row_stats_affine");
  // the statistics kernels read weight and bias in the statistics' dtype (float32 for a float16 layer)
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // (converted only when the dtype differs: a same-dtype .to() returns its input, an alias opcheck's schema
  // test reports for an op whose schema declares none)
  const auto in_acc = [acc](const Tensor& t) { return t.scalar_type() == acc ? t : t.to(acc); };
  const optional<Tensor> w_acc = w.defined() ? optional<Tensor>(in_acc(w)) : std::nullopt;
  const optional<Tensor> b_acc = b.defined() ? optional<Tensor>(in_acc(b)) : std::nullopt;
  if (per_sample) {
    FASTGAN_CHECK_VALUE(!running_mean.has_value() && !running_var.has_value(),
                        "fastgan::norm_act_stats: per-sample statistics take no running stats");
    return row_stats_affine.call(x, w_acc, b_acc, groups, eps);
  }
  if (segments != 1) {
    static const auto segment_stats = op_handle<Tensor2(CT, int64_t)>("segment_stats");
    static const auto stats_affine =
        op_handle<Tensor3(CT, CT, OptT, OptT, const optional<Tensor>&, const optional<Tensor>&, int64_t, double,
                          double)>("stats_affine");
    auto [mean, var] = segment_stats.call(x, segments);
    const int64_t count = x.numel() / (x.size(1) * segments);  // values per channel in one part
    auto [invstd, scale, shift] = stats_affine.call(mean, var, w_acc, b_acc, running_mean, running_var, count,
                                                    momentum, eps);
    return {mean, invstd, scale, shift};
  }
  auto [mean, var, invstd, scale, shift] =
      channel_stats_affine.call(x, w_acc, b_acc, running_mean, running_var, momentum, eps);
  return {mean, invstd, scale, shift};
}

// The batch's statistics as the kernels take them, computed below autograd: they are constants to it
// (the node differentiates through them itself).
KernelTables batch_tables(const Tensor& x, const Tensor& w, const Tensor& b, const optional<Tensor>& running_mean,
                          const optional<Tensor>& running_var, double momentum, double eps, int64_t groups,
                          bool per_sample, int64_t upscale, int64_t segments) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto [mean, invstd, scale, shift] =
      batch_statistics(x, w, b, running_mean, running_var, momentum, eps, groups, per_sample, upscale, segments);
  return kernel_tables(x, w, b, mean, invstd, scale, shift, upscale);
}

Tensor norm_act_stats_autograd(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                               const optional<Tensor>& running_mean, const optional<Tensor>& running_var,
                               double momentum, double eps, int64_t groups, bool per_sample, int64_t act,
                               double slope, int64_t upscale, int64_t segments) {
  check_params("fastgan::norm_act_stats", weight, bias);
  const Tensor w = value(weight), b = value(bias);
  const KernelTables k = batch_tables(x, w, b, running_mean, running_var, momentum, eps, groups, per_sample, upscale,
                                      segments);
  return record_norm_act(x, w, b, k.mean, k.invstd, k.scale, k.shift, groups, /*batch_stats=*/true, act, slope,
                         upscale, k.repeat);
}

Tensor norm_act_stats_forward_only(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                                   const optional<Tensor>& running_mean, const optional<Tensor>& running_var,
                                   double momentum, double eps, int64_t groups, bool per_sample, int64_t act,
                                   double slope, int64_t upscale, int64_t segments) {
  check_params("fastgan::norm_act_stats", weight, bias);
  const KernelTables k = batch_tables(x, value(weight), value(bias), running_mean, running_var, momentum, eps,
                                      groups, per_sample, upscale, segments);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return forward_op(x, k.scale, k.shift, act, slope, upscale);
}

}  // namespace
}  // namespace fastgan

// The schema (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "norm_act(Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor invstd, Tensor scale, Tensor shift, "
      "int groups, bool batch_stats, int act, float slope, int upscale=1) -> Tensor");
  m.def(
      "norm_act_stats(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "float momentum, float eps, int groups, bool per_sample, int act, float slope, int upscale=1, "
      "int segments=1) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("norm_act", &fastgan::norm_act_forward_only);
  m.impl("norm_act_stats", &fastgan::norm_act_stats_forward_only);
}

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("norm_act", &fastgan::norm_act_autograd);
  m.impl("norm_act_stats", &fastgan::norm_act_stats_autograd);
}
