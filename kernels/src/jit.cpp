// Machine code generated per weight for unstructured (1x1 block) sparse weights, AVX-512F only.
//
// Why: the generic column kernel (kernels_body.inc, xt_column) multiplies one output column at
// a time; for every non-zero it loads an index, a weight and a vector of the packed X chunk, so
// with unstructured weights each multiply-add needs its own X load (6-7 of Zen 4's 16
// multiply-adds per cycle, measured by hand earlier). Here the code for a group of up to kJitGroupCols output
// columns is written out for this weight: every row k that any column of the group uses loads
// X[k] once into a register, and each non-zero of that row is one vfmadd231ps into its column's
// own accumulator register with the weight broadcast from memory. With 30 columns at 90 %
// sparsity a row is shared by three columns on average, no index is ever loaded and nothing
// branches. Prototype measured by hand (one thread, 768 x 3072 at 90 %, one 16-row chunk
// multiplied 128 times): 43 GMAC/s against 20 for the column loop.
//
// Each group is a function void f(const float* xt, const float* w, float* out): xt the packed
// chunk [Kp][16], w the group's weights in the order the code uses them (JitKernel::w at
// w_offset[g]), out the group's tile [group columns][16]. Registers: rdi xt, rsi weight cursor,
// rdx out, rax a window into xt (rows within -127..0 of it are reached with an 8-bit
// displacement); zmm31 the X row, zmm0.. the accumulators. No stack, no callee-saved register.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "sparse_matmul.h"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <sys/mman.h>
#define GP_JIT_SUPPORTED 1
#endif

namespace graphprune {

int64_t g_jit_calls = 0;

int64_t jit_calls() { return __atomic_load_n(&g_jit_calls, __ATOMIC_RELAXED); }

JitKernel::~JitKernel() {
#ifdef GP_JIT_SUPPORTED
  if (code) munmap(code, code_bytes);
#endif
}

#ifdef GP_JIT_SUPPORTED
namespace {

// Largest code one weight may take; beyond it the weight keeps the column kernel. Every chunk of
// 16 rows runs the whole code, which must then come from the shared L3 cache or memory at every
// chunk: bench/kernels.py --shapes 4096x4096 --patterns csr, M = 16 / 128 / 2048, 2 threads,
// code off -> on: at 95 % (8.7 MB of code) 0.42 -> 0.47, 3.6 -> 4.1, 48 -> 39 ms; at 90 % (15 MB)
// 0.66 -> 0.88, 6.6 -> 9.9, 97 -> 146 ms; where 768x3072 at 70 % (5.3 MB) gains 1.9x at
// M = 2048.
constexpr size_t kJitMaxCodeBytes = size_t{6} << 20;

enum Gpr : int { kRax = 0, kRdx = 2, kRsi = 6, kRdi = 7 };
constexpr int kXReg = 31;  // zmm holding the current row of X

// A byte buffer with the few x86-64 encodings the group functions need.
class Emitter {
 public:
  std::vector<uint8_t> bytes;

  void byte(uint8_t b) { bytes.push_back(b); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) byte(static_cast<uint8_t>(v >> (8 * i)));
  }

  // EVEX-encoded 512-bit instruction, ModRM.reg = `reg` (zmm), NDS = `nds` (zmm, or -1 for
  // none), ModRM.rm a memory operand [base + disp] whose 8-bit displacement is scaled by
  // `scale` (the disp8*N compression), optionally with a 32-bit broadcast.
  void evex_mem(int map, int pp, uint8_t opcode, int reg, int nds, Gpr base, int32_t disp, int scale,
                bool bcast) {
    evex_prefix(map, pp, reg, nds, /*rm_high=*/(base >> 3) & 1, /*rm_x=*/0, bcast);
    byte(opcode);
    // mod 00: no displacement (base is never rbp/r13, where that means rip-relative, nor
    // rsp/r12, which would need a SIB byte); 01: disp8 * scale; 10: disp32
    const int mod = disp == 0 ? 0 : (disp % scale == 0 && disp / scale >= -128 && disp / scale <= 127) ? 1 : 2;
    byte(static_cast<uint8_t>(mod << 6 | ((reg & 7) << 3) | (base & 7)));
    if (mod == 1) byte(static_cast<uint8_t>(static_cast<int8_t>(disp / scale)));
    if (mod == 2) u32(static_cast<uint32_t>(disp));
  }
  // The register-register form (ModRM.rm = zmm `rm`).
  void evex_reg(int map, int pp, uint8_t opcode, int reg, int nds, int rm) {
    evex_prefix(map, pp, reg, nds, (rm >> 3) & 1, (rm >> 4) & 1, false);
    byte(opcode);
    byte(static_cast<uint8_t>(0xC0 | ((reg & 7) << 3) | (rm & 7)));
  }

  void vpxord_self(int z) { evex_reg(1, 1, 0xEF, z, z, z); }                    // zero zmm z
  void vmovups_load(int z, Gpr b, int32_t d) { evex_mem(1, 0, 0x10, z, -1, b, d, 64, false); }
  void vmovups_store(Gpr b, int32_t d, int z) { evex_mem(1, 0, 0x11, z, -1, b, d, 64, false); }
  // acc += x * broadcast(float at [b + d])
  void vfmadd231ps_bcast(int acc, int x, Gpr b, int32_t d) { evex_mem(2, 1, 0xB8, acc, x, b, d, 4, true); }
  void lea_rax_rdi(int32_t d) {  // lea rax, [rdi + disp32]
    byte(0x48), byte(0x8D), byte(0x87), u32(static_cast<uint32_t>(d));
  }
  void add_rsi(int32_t imm) {  // add rsi, imm32
    byte(0x48), byte(0x81), byte(0xC6), u32(static_cast<uint32_t>(imm));
  }
  void vzeroupper_ret() { byte(0xC5), byte(0xF8), byte(0x77), byte(0xC3); }
  void align(size_t a) {
    while (bytes.size() % a) byte(0xCC);
  }

 private:
  // 62 P0 P1 P2 with L'L = 512 bits, W0, no masking. P0's R, X, B, R' and P1's vvvv and P2's
  // V' are stored inverted.
  void evex_prefix(int map, int pp, int reg, int nds, int rm_high, int rm_x, bool bcast) {
    const int v = nds < 0 ? 0 : nds;
    byte(0x62);
    byte(static_cast<uint8_t>(((~reg >> 3) & 1) << 7 | ((~rm_x) & 1) << 6 | ((~rm_high) & 1) << 5 |
                              ((~reg >> 4) & 1) << 4 | map));
    byte(static_cast<uint8_t>(((~v) & 15) << 3 | 4 | pp));
    byte(static_cast<uint8_t>(2 << 5 | (bcast ? 1 : 0) << 4 | ((~v >> 4) & 1) << 3));
  }
};

struct Entry {
  int32_t k;
  int32_t col;  // within the group
  float w;
};

// One group's function: zero the accumulators, one X load per used row then its multiply-adds,
// the accumulators into the tile.
void emit_group(Emitter* e, std::vector<Entry>* entries, int ncols, AlignedVector<float>* wout) {
  std::stable_sort(entries->begin(), entries->end(),
                   [](const Entry& a, const Entry& b) { return a.k < b.k; });
  for (int c = 0; c < ncols; ++c) e->vpxord_self(c);
  int64_t window = -1;  // rax = xt + window rows
  int32_t last_k = -1;
  int32_t wpos = 0;     // weights since rsi was last advanced
  for (const Entry& en : *entries) {
    if (en.k != last_k) {
      if (window < 0 || en.k > window) {
        window = static_cast<int64_t>(en.k) + 127;  // rows en.k .. en.k + 127 at -127 .. 0
        e->lea_rax_rdi(static_cast<int32_t>(window * 64));
      }
      e->vmovups_load(kXReg, kRax, static_cast<int32_t>((en.k - window) * 64));
      last_k = en.k;
    }
    if (wpos == 128) {
      e->add_rsi(128 * 4);
      wpos = 0;
    }
    e->vfmadd231ps_bcast(en.col, kXReg, kRsi, wpos * 4);
    wout->push_back(en.w);
    ++wpos;
  }
  for (int c = 0; c < ncols; ++c) e->vmovups_store(kRdx, c * 64, c);
  e->vzeroupper_ret();
}

bool jit_enabled() {
  const char* env = std::getenv("GRAPHPRUNE_KERNELS_JIT");
  if (env && (std::strcmp(env, "0") == 0 || std::strcmp(env, "off") == 0)) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

}  // namespace

void attach_jit(PackedWeight* w) {
  w->jit.reset();
  if (w->br != 1 || w->bc != 1 || w->N <= 0 || w->nnzb() < kJitMinColumnNnz * w->N ||
      !jit_enabled())
    return;
  // rows are addressed as rdi + window * 64 with a 32-bit displacement
  if (w->Kp + 128 > (int64_t{1} << 31) / 64) return;
  auto k = std::make_shared<JitKernel>();
  const int64_t G = kJitGroupCols, N = w->N;
  const int64_t ngroups = (N + G - 1) / G;
  Emitter e;
  std::vector<size_t> entry(static_cast<size_t>(ngroups));
  k->w_offset.resize(static_cast<size_t>(ngroups));
  k->w.reserve(static_cast<size_t>(w->nnzb()));
  std::vector<Entry> entries;
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t n0 = g * G, n1 = std::min(N, n0 + G);
    entries.clear();
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t b = w->col_ptr[static_cast<size_t>(n)]; b < w->col_ptr[static_cast<size_t>(n) + 1]; ++b)
        if (w->vals[static_cast<size_t>(b)] != 0.0f)  // pad_columns' padding
          entries.push_back({w->k0[static_cast<size_t>(b)], static_cast<int32_t>(n - n0),
                             w->vals[static_cast<size_t>(b)]});
    e.align(16);
    entry[static_cast<size_t>(g)] = e.bytes.size();
    k->w_offset[static_cast<size_t>(g)] = static_cast<int64_t>(k->w.size());
    emit_group(&e, &entries, static_cast<int>(n1 - n0), &k->w);
    if (e.bytes.size() > kJitMaxCodeBytes) return;
  }
  k->w.resize(k->w.size() + kValsTailPad, 0.0f);
  const size_t page = 4096;
  const size_t size = (e.bytes.size() + page - 1) / page * page;
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return;
  std::memcpy(mem, e.bytes.data(), e.bytes.size());
  if (mprotect(mem, size, PROT_READ | PROT_EXEC) != 0) {  // W^X policy: keep the column kernel
    munmap(mem, size);
    return;
  }
  k->code = mem;
  k->code_bytes = size;
  k->group_cols = G;
  k->fn.resize(static_cast<size_t>(ngroups));
  for (int64_t g = 0; g < ngroups; ++g)
    k->fn[static_cast<size_t>(g)] =
        reinterpret_cast<JitGroupFn>(static_cast<uint8_t*>(mem) + entry[static_cast<size_t>(g)]);
  w->jit = std::move(k);
}

#else  // no JIT on this platform: every weight keeps the column kernel

void attach_jit(PackedWeight* w) { w->jit.reset(); }

#endif

}  // namespace graphprune
