// The native program executor: runs one encoded `ttmetal.enqueue_program` on every core of its grid with
// the observable behaviour of runtime/interpreter.py (memory contents, counts, faults), bit for bit.
//
// Design
// - The op stream (program.h, encoded once per program by runtime/native_program.py): fixed-width int64
//   instructions, one kernel after the other, each kernel ending in END; loops are FOR_BEGIN / FOR_END
//   pairs with their trip counts; attributes are resolved to integers (float attributes and SFPU tables
//   by index into side arrays), SSA values to register numbers.
// - Cores run independently. All cores of a program execute the same static control flow, and the CB
//   counts and pointers, the Dst protocol state, the blocking of kernels and so the scheduler's order and
//   step count depend only on op attributes: each core runs its own copy of the interpreter's round-robin
//   scheduler over its three kernels and meets every op at the same step count as every other core.
//   That step count orders faults across cores (program.h: Fault), so the reported fault is the one the
//   lockstep interpreter meets first, with the mask of the cores that fault there.
// - Cores are spread over threads (an atomic work counter); what a core computes does not depend on the
//   thread or on the other cores, and everything summed over cores (bytes, write ranges) is combined by
//   commutative operations, so any thread count gives the same bits.
// - The interpreter's counts that mix cores (a masked transfer counts sum over cores // cores bytes per
//   core; a write touches the range from the lowest to the highest offset written by all cores) are kept
//   per op instance (its step count) and combined after all cores ran.
//
// Instruction fields (f[0] opcode, f[1] op id):
//   GET_ARG dst, index | CONSTANT dst, value | BUFFER_ADDRESS dst, operand | ADDI/MULI/MINI dst, a, b
//   FOR_BEGIN iv, lower, step, trips, end pc, counter | FOR_END begin pc
//   CB_* cb, pages | ADDRGEN agen, base, page_size, memory (0 dram, 1 l1), format (-1 none), layout
//   NOC_READ_TILES / NOC_WRITE_TILES agen, start, valid (-1 none), cb, cb_offset, rows, cols, row_stride,
//     col_stride | NOC_READ_PAGES agen, start, -, cb, cb_offset, count, segment offset, segment size (-1 none)
//   NOC_READ_TILES_INDEXED agen, -, -, cb, cb_offset, index_cb, index_offset, count, sources, source
//   NOC_READ_ROWS_INDEXED agen, offset, valid, cb, cb_offset, index_cb, count, wrap, pad_negative, segment offset,
//     segment size (-1 none)
//   NOC_WRITE_ROWS agen, start, valid, cb, -, count, segment offset, segment size (-1 none)
//   (a compute op's last field, `charge`, is its count key and tiles: Counters::charge)
//   COPY_TILES / TRANSPOSE_TILES cb, offset, row_stride, col_stride, rows, cols, dst, charge
//   TILIZE_TILES cb, col_offset, cols, dst, -, -, -, charge | PACK_ROWS cb, col_offset, cols, dst
//   BINARY_TILES op, cb_a, a_offset, a_row_stride, a_col_stride, cb_b, b_offset, b_row_stride, b_col_stride,
//     bcast, rows, cols, dst, charge
//   MATMUL_TILES cb_a, a_offset, a_row_stride, cb_b, b_offset, b_row_stride, inner, rows, cols, dst,
//     fidelity, accumulate (0: the slots start from zero), charge
//   REDUCE_TILES kind (0 sum, 1 max), dim, cb, offset, row_stride, col_stride, rows, cols, dst, scaler (float
//     index), fidelity, charge
//   SFPU_TILES mode (0 table, 1 scalar), table index or ScalarFn, dst, count, param (float index), charge
//   SFPU_BINARY_TILES fn, dst, dst_b, count, charge | FILL_TILES dst, count, value (float index), charge
//   MASK_TILES row_tile, col_tile, rows, cols, dst, valid_rows, valid_cols, fill (float index), charge
//   PACK_TILES dst, count, cb, cb_offset | RAISE message index, cb
//   SEM_SET / SEM_WAIT enabled (-1 none), semaphore, value | SEM_INC x, y, enabled, semaphore, amount, grid x, grid y
//   NOC_MCAST x0, y0, x1, y1, enabled, cb, cb_offset, pages, semaphore (-1 none), value, grid x, grid y
//
// Semaphores and multicast (runtime/multicast.py) make cores depend on each other: a program holding them
// runs its cores in lockstep (`Lockstep`): up to each inter-core op every core on its own (spread over the
// threads), then that op on every core with the interpreter's outcome (a multicast whose senders write overlapping
// places and a blocked wait in grid order on the coordinator, the others in the next phase on each core's
// thread: Lockstep::coordinate); the semaphores in `Run::semaphores`; a semaphore_wait blocks the kernel on every core while any enabled core's
// semaphore is short.
#include "program.h"

#include "convert.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

namespace py = pybind11;

namespace ttc {
// Memory.poison's bytes and marks for [start, end) of every bank (bind_host.cpp); whether it marked blocks
bool poison_range(py::array data, py::array marks, int64_t start, int64_t end);
// eltwise_tile of two packed bf16 tiles read in place into a bf16 Dst tile (eltwise.cpp)
void eltwise_bf16_pages(const uint8_t* a, const uint8_t* b, BinaryOp op, Bcast bcast, float* out);
}  // namespace ttc

namespace ttc::program {

namespace {

constexpr int KERNELS = 3;  // reader, compute, writer
constexpr int COMPUTE = 1;
constexpr int HALF_DST = 8;
constexpr int NUM_CBS = 32;
constexpr int64_t DEADLOCK_POSITION = std::numeric_limits<int64_t>::max() - 1;
constexpr int64_t DRAINED_POSITION = std::numeric_limits<int64_t>::max();

enum DstState : int { RELEASED = 0, ACQUIRED = 1, COMMITTED = 2, WAITED = 3 };
enum Layout : int { INTERLEAVED = 0 };  // 1 height_sharded, 2 width_sharded, 3 block_sharded
enum Access : int { READ = 0, WRITE = 1 };

// Python's // and % (the interpreter's index arithmetic): floor division, a remainder with the divisor's sign.
inline int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
inline int64_t floormod(int64_t a, int64_t b) { return a - floordiv(a, b) * b; }
// numpy int64 arithmetic wraps around (per-core values are int64 arrays)
inline int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
inline int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

// memmove of a NoC transfer: a row page of 64 or 32 bytes (a 32-channel bf16 or 16-channel stick) inline,
// loaded whole before it is stored (source and destination may overlap, as with memmove)
inline void move_bytes(uint8_t* to, const uint8_t* from, int64_t size) {
  if (size == 64) {
    uint8_t t[64];
    std::memcpy(t, from, 64);
    std::memcpy(to, t, 64);
  } else if (size == 32) {
    uint8_t t[32];
    std::memcpy(t, from, 32);
    std::memcpy(to, t, 32);
  } else {
    std::memmove(to, from, static_cast<size_t>(size));
  }
}

// The op handlers stay out of Core::execute: inlined, their frames (64-byte aligned vector temporaries) made
// every instruction's dispatch pay their prologue.
#define TTC_NOINLINE __attribute__((noinline))

// ------------------------------------------------------------------------------------------ encoding

struct Instr {
  int64_t f[W];
};

struct CBConfig {
  bool configured = false;
  int64_t address = 0, page_size = 0, pages = 0;
  int format = -1;  // Format, -1: none
};

}  // namespace

// The encoded program: everything that depends only on the IR, the device and the runtime arguments.
struct Encoded {
  std::vector<Instr> code;
  int64_t kernel_start[KERNELS] = {};
  int64_t n_regs = 0, n_agens = 0;
  CBConfig cbs[NUM_CBS];
  std::vector<int> cb_order;  // configured CB indices, ascending (the drained check's order)
  std::vector<int64_t> arg_offsets[KERNELS];  // per kernel [cores + 1] into arg_values
  std::vector<int64_t> arg_values[KERNELS];
  std::vector<int64_t> banks;  // L1 bank (device core) of each program core
  int64_t cores = 0;
  bool lockstep = false;  // the program holds semaphore or multicast ops: its cores run in lockstep
  DstFormat dst = DstFormat::BF16;
  std::vector<double> fparams;
  std::vector<float> tables;  // 65536 floats per SFPU table
  std::vector<uint8_t> table_overflow;  // f16 programs: 65536 Float16 overflow marks per table, else empty
  double last_run_us = 0;     // how long the last run took (a hint for the thread count)
  int last_workers = 1;       // on how many threads
  // Runs on several threads are not always faster (a loaded machine: the other threads may not be running). A
  // program that may take several keeps its last run's time on one (serial_us) and on several (parallel_us), and
  // takes several unless one was clearly faster (by a quarter), trying the other way on its second run and then
  // at next_probe (the first run, cold, is not recorded). The probes' spacing (probe_every) doubles at each
  // probe, up to kProbeMost runs, while the choice holds (chosen: 1 one thread, 2 several, 0 none yet), and
  // goes back to kProbeEvery when it flips: a probe costs a run the slower way, so a settled program is probed
  // rarely. serial_runs: runs left on one thread after a run in which the caller's thread spent a large share of
  // the time waiting for the others.
  double serial_us = 0, parallel_us = 0;
  int64_t runs = 0, next_probe = 2;
  int probe_every = 16, chosen = 0;
  int serial_runs = 0;
};

namespace {

// ------------------------------------------------------------------------------------------ memories

struct Sharded {
  int64_t address = 0, page_size = 0, num_pages = 0, cols = 1, shard_rows = 1, shard_cols = 1, per_row = 1;
  int layout = 1;
  std::vector<int64_t> banks;
};

struct Memory {
  int id = 0;  // 0 DRAM, 1 L1
  uint8_t* data = nullptr;
  int64_t banks = 0, capacity = 0;
  int64_t stride = 0;  // bytes from one bank's first byte to the next's (capacity plus device.py's skew)
  // Lazy poison (runtime/device.py Memory.poison): marks[bank * blocks + i] != 0 while block i of a bank holds
  // POISON bytes not yet filled in; nullptr when no block is marked. 1 marked, 2 being filled by a thread.
  uint8_t* marks = nullptr;
  int64_t blocks = 0;
  std::vector<int64_t> starts, ends, sizes, counts;  // the buffer table (Memory._buffer_table)
  std::vector<Sharded> sharded;
  std::vector<int64_t> watch;  // [start, end) pairs of watched ranges
  uint64_t bank_magic = 0;  // ceil(2**64 / banks) for banks of 2..2**32-1 (quotient_by_banks), else 0

  // floordiv and floormod of v by the bank count. Lemire's fastmod for 0 <= v < 2**32 and a 32-bit
  // divisor: both exact there (Lemire, Kaser and Kurz, "Faster remainder by direct computation", 2019);
  // others take the divisions.
  __attribute__((always_inline)) void by_banks(int64_t v, int64_t& quotient, int64_t& remainder) const {
    if (bank_magic && static_cast<uint64_t>(v) <= 0xFFFFFFFFu) {
      const uint64_t low = bank_magic * static_cast<uint64_t>(v);
      quotient = static_cast<int64_t>((static_cast<unsigned __int128>(bank_magic) * static_cast<uint64_t>(v)) >> 64);
      remainder = static_cast<int64_t>((static_cast<unsigned __int128>(low) * static_cast<uint64_t>(banks)) >> 64);
      return;
    }
    quotient = floordiv(v, banks);
    remainder = floormod(v, banks);
  }
};

struct AddrGen {
  int64_t base = 0, page_size = 0;
  int memory = 0, format = -1, layout = 0;
  // locate's buffer table slot of the base (-1: none, -2: not looked up yet), kept for the generator's next page
  mutable int64_t slot = -2;
};

struct CBState {
  int64_t filled = 0, reserved = 0, waited = 0, front = 0, back = 0;
};

struct KernelState {
  int64_t pc = 0;
  bool retry = false;  // the op at pc blocked: it is retried without counting a step
  uint32_t pending_reads = 0, pending_writes = 0;
  int64_t blocked_op = -1, blocked_cb = -1, blocked_want = 0;
  int blocked_what = 0;  // 0 "free", 1 "filled", 2 a semaphore (blocked_cb: its index)
  int64_t blocked_core = -1, blocked_holds = 0;  // a semaphore: the first short core and its value
};

constexpr int64_t POISON_BLOCK = 256;  // device.py POISON_BLOCK
constexpr uint8_t POISON = 0xFF;

// Fill block `block` of bank b with POISON if it is marked (once, whichever thread gets there first; the
// others wait for the fill, as cores of different threads may touch different bytes of one block).
void fill_block(const Memory& m, int64_t b, int64_t block) {
  uint8_t* mark = m.marks + b * m.blocks + block;
  for (uint8_t state = __atomic_load_n(mark, __ATOMIC_ACQUIRE); state;) {
    if (state == 1) {
      if (__atomic_compare_exchange_n(mark, &state, uint8_t{2}, false, __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE)) {
        std::memset(m.data + b * m.stride + block * POISON_BLOCK, POISON, POISON_BLOCK);
        __atomic_store_n(mark, uint8_t{0}, __ATOMIC_RELEASE);
        return;
      }
    } else {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      state = __atomic_load_n(mark, __ATOMIC_ACQUIRE);
    }
  }
}

// Bytes [offset, offset + size) of bank b are about to be read (or, `write`, written): the marked blocks
// they meet are filled, except blocks a write covers whole, whose marks are just cleared (no other core
// touches their bytes in a program without races, so a plain store does).
void unpoison_marked(const Memory& m, int64_t b, int64_t offset, int64_t size, bool write);

inline void unpoison(const Memory& m, int64_t b, int64_t offset, int64_t size, bool write) {
  if (!m.marks || size <= 0) return;
  // a transfer over at most 16 blocks whose marks are clear (the common case: rows and tiles, a 2 KiB tile off the
  // block grid meets 9) needs nothing: two 8-byte loads of marks look at them (within the marks array)
  const int64_t first = offset / POISON_BLOCK, last = std::min((offset + size - 1) / POISON_BLOCK, m.blocks - 1);
  if (last < first) return;  // past the bank's last whole block: never marked
  if (last - first < 16) {
    const int64_t at = b * m.blocks + first;
    const uint8_t* marks = m.marks + at;
    const int64_t n = last - first + 1;
    uint64_t any = 0;
    if (at + 16 <= m.banks * m.blocks) {
      uint64_t lo, hi;
      std::memcpy(&lo, marks, 8);
      std::memcpy(&hi, marks + 8, 8);
      // the marks of blocks first..last: n bytes of lo then hi (little-endian)
      any = (n >= 8 ? lo : lo & ((uint64_t{1} << (8 * n)) - 1)) | (n > 8 ? hi & (~uint64_t{0} >> (8 * (16 - n))) : 0);
    } else {
      for (int64_t block = first; block <= last; ++block) any |= __atomic_load_n(marks + block - first, __ATOMIC_RELAXED);
    }
    if (!any) return;
  }
  unpoison_marked(m, b, offset, size, write);
}

TTC_NOINLINE void unpoison_marked(const Memory& m, int64_t b, int64_t offset, int64_t size, bool write) {
  // blocks past the last whole one of a bank (a bank size off the block grid) are never marked
  const int64_t first = offset / POISON_BLOCK, last = std::min((offset + size - 1) / POISON_BLOCK, m.blocks - 1);
  uint8_t* marks = m.marks + b * m.blocks;
  {  // most ranges hold no mark: look 8 marks at a time first
    int64_t block = first;
    uint64_t any = 0;
    for (; block + 8 <= last + 1 && !any; block += 8) std::memcpy(&any, marks + block, 8);
    for (; block <= last && !any; ++block) any = marks[block];
    if (!any) return;
  }
  int64_t lo = last + 1, hi = last + 1;  // the blocks a write covers whole: [lo, hi)
  if (write) {
    lo = (offset + POISON_BLOCK - 1) / POISON_BLOCK;
    hi = std::max(lo, (offset + size) / POISON_BLOCK);
  }
  for (int64_t block = first; block <= last; ++block) {
    if (!__atomic_load_n(marks + block, __ATOMIC_RELAXED)) continue;
    if (block >= lo && block < hi)
      __atomic_store_n(marks + block, uint8_t{0}, __ATOMIC_RELAXED);
    else
      fill_block(m, b, block);
  }
}

struct Stop {};  // another core faulted earlier: this core's run no longer matters

// What one thread gathers over the cores it runs (combined by sums and min/max: any order is the same).
struct ThreadAcc {
  std::vector<int64_t> masked_sum;                  // per masked-count instance: sum over cores of its count
  std::vector<std::pair<int64_t, int>> masked_meta;  // its page size; 1: DRAM traffic, 2: a write
  struct Key {
    int64_t step, group;
    int memory;
    bool operator==(const Key& o) const { return step == o.step && group == o.group && memory == o.memory; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<int64_t>()(k.step * 1000003 + k.group) ^ static_cast<size_t>(k.memory);
    }
  };
  std::unordered_map<Key, std::pair<int64_t, int64_t>, KeyHash> writes;  // write range per write call
  int64_t local_bytes = 0;
  struct Transfer {  // a NoC transfer, recorded when checking that cores do not race (tests only)
    int memory;
    int64_t bank, lo, hi, core;
    bool write;
    uint64_t hash;  // of the bytes written: cores writing the same bytes to the same place do not race
  };
  std::vector<Transfer> transfers;
};

// A compute op's charge field is a count key (an index into runtime/native_program.py's key list) and the
// tiles it makes: key << 40 | tiles.
constexpr int NUM_COUNT_KEYS = 64;
struct Counters {
  int64_t tiles[NUM_COUNT_KEYS] = {};                      // per count key
  int64_t noc_bytes = 0, dram_bytes = 0, dram_written = 0;  // per core, static parts
  int64_t mcast_sent = 0, mcast_fanout = 1;                  // bytes this core multicast; its widest fan-out
  void charge(int64_t code) { tiles[code >> 40] += code & ((int64_t{1} << 40) - 1); }
};

struct Run {
  const Encoded& E;
  Memory mem[2];
  std::vector<int64_t> addresses;
  int64_t budget = 0;
  bool check_races = false;
  std::atomic<int64_t> best{std::numeric_limits<int64_t>::max()};
  std::vector<std::optional<Fault>> faults;  // per core
  std::vector<Counters> counters;            // per core
  std::vector<int64_t> semaphores;           // lockstep programs: [cores][NUM_SEMAPHORES]
  // lockstep programs: [cores][NUM_CBS], a multicast wrote the CB there and the core has completed no semaphore
  // wait since (runtime/multicast.py: pushing it then is a fault)
  std::vector<uint8_t> unlanded;
  explicit Run(const Encoded& e) : E(e) {}
};

[[noreturn]] void fail(int kind, int64_t cb, std::initializer_list<int64_t> params, int64_t stage = 0,
                       int64_t group = 0, bool all_cores = false) {
  Fault f;
  f.kind = kind;
  f.cb = cb;
  f.stage = stage;
  f.group = group;
  f.all_cores = all_cores;
  int i = 0;
  for (int64_t p : params) f.params[i++] = p;
  throw f;
}

[[noreturn]] void internal(const std::string& text, int64_t cb = -1) {
  Fault f;
  f.kind = INTERNAL;
  f.cb = cb;
  f.text = text;
  throw f;
}

[[noreturn]] TTC_NOINLINE void missing_argument(int64_t index) {
  internal("runtime argument " + std::to_string(index) + " does not exist");
}
[[noreturn]] TTC_NOINLINE void unknown_opcode(int64_t opcode) { internal("unknown opcode " + std::to_string(opcode)); }
[[noreturn]] TTC_NOINLINE void outside_memory(int64_t size, int64_t offset, int64_t b, int64_t cb_index) {
  internal("a NoC transfer of " + std::to_string(size) + " bytes at " + std::to_string(offset) + " in bank " +
               std::to_string(b) + " is outside the memory",
           cb_index);
}

// ------------------------------------------------------------------------------------------ one core

class Lockstep;

class Core {
 public:
  // The scratch vectors (Dst among them) are the thread's, kept between programs: allocating and first
  // touching them for every program costs more than a small program runs. Dst's old values are never read
  // (every slot is NaN-filled before its first read, see TILE_REGS_ACQUIRE).
  // `scratch`: which of the thread's scratch sets the core takes (a lockstep program's cores, all alive at once
  // and made on the coordinating thread, take one each: allocating and zeroing a fresh Dst per core and program
  // cost a lockstep program more than its ops).
  // `own_temps`: the core takes the op temporaries of its scratch set instead of the thread's (a lockstep program
  // on several threads, whose cores any thread may run).
  Core(Run& run, ThreadAcc& acc, size_t scratch = 0, bool own_temps = false)
      : R(run), E(run.E), T(acc), scratch_set(scratch), temps(own_temps ? kept_temps(scratch) : thread_temps()),
        offs(temps.offs), pages(temps.pages),
        located_bank(temps.located_bank), located_offset(temps.located_offset), wanted(temps.wanted),
        tiles_a(temps.tiles_a), tiles_b(temps.tiles_b), ptr_a(temps.ptr_a), ptr_b(temps.ptr_b),
        pages_a(temps.pages_a), pages_b(temps.pages_b), half_a(temps.half_a), half_b(temps.half_b),
        ptr_dst(temps.ptr_dst) {
    swap_scratch();
    regs.assign(E.n_regs, 0);
    agens.assign(E.n_agens, AddrGen{});
    if (dst.size() < static_cast<size_t>(2 * HALF_DST * TILE_ELEMS)) dst.resize(2 * HALF_DST * TILE_ELEMS);
  }
  ~Core() { swap_scratch(); }
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  void run(int64_t core);
  friend class Lockstep;  // a program with semaphores or multicast: its cores in lockstep (header comment)

 private:
  Run& R;
  const Encoded& E;
  ThreadAcc& T;
  size_t scratch_set = 0;
  int64_t core = 0, bank = 0;
  uint8_t* own_l1 = nullptr;  // this core's L1 bank
  std::vector<int64_t> regs;
  std::vector<AddrGen> agens;
  CBState cb[NUM_CBS];
  KernelState k[KERNELS];
  int dst_state = RELEASED, dst_half = 1;
  uint32_t dst_written = 0xFFFF;
  uint32_t dst_stale = 0;  // slots that are NaN by the protocol but not filled yet (filled when first read)
  std::vector<float> dst;
  int64_t steps = 0;
  int64_t masked_index = 0;
  Counters counters;
  // where the core is, for a fault's position and text
  int64_t position = 0;
  int cur_kernel = -1;
  int64_t cur_op = -1;
  // Temporaries of one op (nothing in them outlives the op): the thread's, shared by every core the thread runs
  // (a lockstep program's cores too, which so find them in cache instead of each touching its own set).
  struct Temps {
    std::vector<int64_t> offs, pages, located_bank, located_offset;
    std::vector<uint8_t> wanted;
    std::vector<float> tiles_a, tiles_b;
    std::vector<const float*> ptr_a, ptr_b;
    std::vector<const uint8_t*> pages_a, pages_b;
    std::vector<const uint16_t*> half_a, half_b;  // bf16 pages, read with memcpy (any alignment)
    std::vector<float*> ptr_dst;
  };
  static Temps& thread_temps() {
    thread_local Temps temps;
    return temps;
  }
  static Temps& kept_temps(size_t set) {  // the thread's scratch set `set`'s, kept between programs
    thread_local std::vector<std::unique_ptr<Temps>> sets;
    while (sets.size() <= set) sets.push_back(std::make_unique<Temps>());
    return *sets[set];
  }
  Temps& temps;
  std::vector<int64_t>&offs, &pages, &located_bank, &located_offset;
  std::vector<uint8_t>& wanted;
  std::vector<float>&tiles_a, &tiles_b;
  std::vector<const float*>&ptr_a, &ptr_b;
  std::vector<const uint8_t*>&pages_a, &pages_b;
  std::vector<const uint16_t*>&half_a, &half_b;
  std::vector<float*>& ptr_dst;

  // The core's own state that outlives an op (registers, address generators, Dst), kept per scratch set.
  void swap_scratch() {
    struct Kept {
      std::vector<int64_t> regs;
      std::vector<AddrGen> agens;
      std::vector<float> dst;
    };
    thread_local std::vector<std::unique_ptr<Kept>> sets;
    while (sets.size() <= scratch_set) sets.push_back(std::make_unique<Kept>());
    Kept& kept = *sets[scratch_set];
    regs.swap(kept.regs), agens.swap(kept.agens), dst.swap(kept.dst);
  }

  // -- scheduler ----------------------------------------------------------------------------------

  enum Resume { BLOCKED, FINISHED, CONTINUE, NONE };  // NONE: not run (Lockstep)
  Resume resume(int kernel);
  Resume step(int kernel);  // one instruction of a kernel
  // instructions of a kernel up to (not including) the next semaphore or multicast op, or until it blocks or ends
  // the inter-core op the core stands at, run in a phase of its own cores (Lockstep::coordinate: none blocks)
  Resume step_inter_core(int kernel) {
    cur_kernel = kernel;
    force_block = false;
    return step(kernel);
  }
  // step_first: the core stands at an inter-core op that the phase runs first (Lockstep::coordinate)
  Resume run_segment(int kernel, bool step_first = false) {
    if (step_first) {
      Resume r = step_inter_core(kernel);
      if (r != CONTINUE) return r;
    }
    cur_kernel = kernel;
    for (;;) {
      int64_t opc = E.code[k[kernel].pc].f[0];
      if (opc == SEM_SET || opc == SEM_WAIT || opc == SEM_INC || opc == NOC_MCAST) return CONTINUE;
      Resume r = step(kernel);
      if (r != CONTINUE) return r;
    }
  }
  void start(int64_t index);
  void record(Fault& f);
  // lockstep: the semaphore_wait about to run blocks on every core (a short core and its value)
  bool force_block = false;
  int64_t force_core = -1, force_holds = 0;
  bool enabled(int64_t reg) const { return reg < 0 || regs[reg] != 0; }
  // a noc_mcast's rectangle (x0, y0, x1, y1) from the core's registers, and whether it lies in the grid
  bool mcast_rect(const int64_t* f, int64_t* rect) const {
    for (int i = 0; i < 4; ++i) rect[i] = regs[f[2 + i]];
    return rect[0] >= 0 && rect[1] >= 0 && rect[2] < f[12] && rect[3] < f[13] && rect[0] <= rect[2] &&
           rect[1] <= rect[3];
  }
  int64_t& semaphore(int64_t core_index, int64_t index) { return R.semaphores[core_index * NUM_SEMAPHORES + index]; }
  TTC_NOINLINE void op_noc_mcast(int kernel, const Instr& in);
  TTC_NOINLINE void op_sem_inc(const Instr& in);
  void execute(int kernel, const Instr& in, bool& blocked);
  void finish(int kernel);
  void check_drained();
  [[noreturn]] void deadlock(const int* live, int n_live);

  // -- circular buffers ---------------------------------------------------------------------------

  const CBConfig& config(int64_t index) const {
    if (index < 0 || index >= NUM_CBS || !E.cbs[index].configured) fail(CB_NOT_CONFIGURED, index, {});
    return E.cbs[index];
  }
  uint8_t* slot_ptr(int64_t index, int64_t slot) const {
    const CBConfig& c = E.cbs[index];
    return own_l1 + c.address + slot * c.page_size;
  }
  // Interpreter `_check_window` + `_ring_slots`: the ring slots of offsets[0..n) in a window.
  void check_window(int64_t index, const int64_t* o, int64_t n, int64_t window, bool front, int64_t stage = 0) {
    for (int64_t i = 0; i < n; ++i)
      if (o[i] < 0 || o[i] >= window) fail(WINDOW, index, {o[i], window, front ? 1 : 0}, stage);
  }
  // floormod(at, pages) of a ring pointer plus an offset: both in [0, pages) as a rule (a pointer, a checked window
  // offset or a count of at most the pages), so one subtraction does it instead of a division
  static int64_t ring(int64_t at, int64_t pages) {
    if (pages > 0 && static_cast<uint64_t>(at) < 2 * static_cast<uint64_t>(pages)) return at >= pages ? at - pages : at;
    return floormod(at, pages);
  }
  int64_t front_slot(int64_t index, int64_t offset) const { return ring(cb[index].front + offset, E.cbs[index].pages); }
  int64_t back_slot(int64_t index, int64_t offset) const { return ring(cb[index].back + offset, E.cbs[index].pages); }
  void page_range(int64_t first, int64_t count) {
    offs.resize(std::max<int64_t>(count, 0));
    for (int64_t i = 0; i < count; ++i) offs[i] = first + i;
  }
  void tile_block(int64_t offset, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
    rows = std::max<int64_t>(rows, 0);
    cols = std::max<int64_t>(cols, 0);
    offs.resize(rows * cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) offs[r * cols + c] = offset + r * row_stride + c * col_stride;
  }
  Format tile_format(int64_t index) const {
    const CBConfig& c = E.cbs[index];
    if (c.format < 0) fail(NO_FORMAT, index, {});
    Format f = static_cast<Format>(c.format);
    if (c.page_size != tile_bytes(f)) fail(TILE_PAGE, index, {c.page_size, c.format});
    return f;
  }

  // -- NoC ----------------------------------------------------------------------------------------

  const Sharded* resolve(const AddrGen& g, int64_t cb_index, int64_t stage);
  TTC_NOINLINE void locate_slow(const AddrGen& g, const Sharded* sh, int64_t page, Access access, int64_t cb_index,
                                int64_t stage, int64_t group, bool all_cores, int64_t& out_bank, int64_t& out_offset);
  // locate_slow's interleaved path inline when the buffer table slot of the base is the one kept
  void locate(const AddrGen& g, const Sharded* sh, int64_t page, Access access, int64_t cb_index, int64_t stage,
              int64_t group, bool all_cores, int64_t& out_bank, int64_t& out_offset) {
    const Memory& m = R.mem[g.memory];
    if (!sh && g.slot >= 0 && page >= 0) {
      int64_t b, row;
      m.by_banks(page, row, b);
      const int64_t offset = wrap_add(g.base, wrap_mul(row, g.page_size));
      const int64_t s = g.slot;
      if (g.base < m.ends[s]) {
        int64_t in_bank, unused;
        m.by_banks(m.counts[s] - b + m.banks - 1, in_bank, unused);
        if (offset + g.page_size <= m.starts[s] + in_bank * m.sizes[s]) {
          out_bank = b;
          out_offset = offset;
          return;
        }
      }
    }
    locate_slow(g, sh, page, access, cb_index, stage, group, all_cores, out_bank, out_offset);
  }
  // The bytes of a NoC transfer (poisoned blocks filled first, see unpoison).
  __attribute__((always_inline)) uint8_t* memory_ptr(const Memory& m, int64_t b, int64_t offset, int64_t size,
                                                      int64_t cb_index, Access access) const {
    if (b < 0 || b >= m.banks || offset < 0 || offset + size > m.capacity) outside_memory(size, offset, b, cb_index);
    unpoison(m, b, offset, size, access == WRITE);
    return m.data + b * m.stride + offset;
  }
  void check_format(const AddrGen& g, int64_t index, int64_t stage = 0) const {
    const CBConfig& c = E.cbs[index];
    if (g.format >= 0 && c.format >= 0 && g.format != c.format) fail(NOC_FORMAT, index, {g.format, c.format}, stage);
  }
  void check_noc(const AddrGen& g, int64_t index, int64_t stage = 0) const {
    check_format(g, index, stage);
    const CBConfig& c = E.cbs[index];
    if (g.page_size > c.page_size) fail(NOC_PAGE_SIZE, index, {g.page_size, c.page_size}, stage);
  }
  // Interpreter `_segment`: a row segment outside the buffer's pages (stage), then longer than a CB page (stage + 1).
  void check_segment(const AddrGen& g, int64_t index, int64_t offset, int64_t size, int64_t stage) const {
    if (offset < 0 || size < 0 || offset + size > g.page_size)
      fail(SEGMENT_OUTSIDE, index, {size, offset, g.page_size}, stage);
    if (size > E.cbs[index].page_size) fail(SEGMENT_CB, index, {size, E.cbs[index].page_size}, stage + 1);
  }
  // The located pages' first lines (`data`) and their poison marks (unpoison's look at them) are fetched ahead
  // of the copies, so that their cache misses overlap (marks of pages all over a memory miss as often as the
  // pages do).
  void prefetch_pages(const Memory& m, int64_t n, bool data, bool marks = true) {
    marks = marks && m.marks;
    if (!data && !marks) return;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = located_bank[i], offset = located_offset[i];
      if (b < 0 || b >= m.banks || offset < 0 || offset >= m.capacity) continue;
      if (data) __builtin_prefetch(m.data + b * m.stride + offset);
      if (marks && offset / POISON_BLOCK < m.blocks) __builtin_prefetch(m.marks + b * m.blocks + offset / POISON_BLOCK);
    }
  }
  // Buffer regions ([start, end) of every bank of a memory) whose poison marks this Core object looked at while
  // running a program. Marks are set only between programs (a fresh buffer's poison) and a run only clears them,
  // so a region found free of marks stays free to the end of the run: a NoC read from it skips each page's look
  // at the marks (a cache miss per row for a gather over many banks). A region is looked at on its second read
  // (a core reading a buffer once would pay more than it saves), and only when its marks are few (kCleanScan).
  struct Region {
    int memory = 0;
    int64_t start = 0, end = 0;
    int state = 0;  // 0 read once, 1 no marks, 2 marked (or too large to look at)
  };
  std::vector<Region> regions;
  static constexpr int64_t kCleanScan = 4096;  // marks looked at per region at most
  static constexpr size_t kRegions = 16;
  // [lo, hi): g's buffer region when it holds no poison mark, else lo = hi = 0
  void clean_range(const Memory& m, const AddrGen& g, int64_t& lo, int64_t& hi);
  // The lines of a page (up to 4 KiB of it) about to be copied, fetched while the page before it is copied (a
  // tile's lines from a cold bank would otherwise miss one after the other).
  static void prefetch_page(const Memory& m, int64_t b, int64_t offset, int64_t size) {
    if (b < 0 || b >= m.banks || offset < 0 || offset + size > m.capacity) return;
    const uint8_t* p = m.data + b * m.stride + offset;
    for (int64_t at = 0; at < std::min<int64_t>(size, 4096); at += 64) __builtin_prefetch(p + at);
  }
  enum CountMode { COUNT_STATIC, COUNT_MASKED };
  // With `segmented`: a row segment (bytes seg_offset.. of each page, seg_size of them) to the start of each CB
  // page, the rest of the page zero, counted in bytes.
  void noc_read(int kernel, const AddrGen& g, int64_t cb_index, int64_t cb_offset, int64_t n, const int64_t* page_list,
                const uint8_t* want, bool zero_unwanted, CountMode mode, bool with_bank, int64_t stage = 0,
                bool segmented = false, int64_t seg_offset = 0, int64_t seg_size = 0);
  void transfer(const AddrGen& g, int64_t b, int64_t offset, const uint8_t* written, int64_t size = -1) {
    if (!R.check_races) return;
    if (size < 0) size = g.page_size;
    uint64_t hash = 14695981039346656037ull;  // FNV-1a
    bool write = written != nullptr;
    if (write)
      for (int64_t i = 0; i < size; ++i) hash = (hash ^ written[i]) * 1099511628211ull;
    T.transfers.push_back({g.memory, b, offset, offset + size, core, write, hash});
  }
  // A masked transfer of `count` units of `unit` bytes (a page by default; 1 for row segments, counted in bytes).
  void count_masked(const AddrGen& g, int64_t count, bool write = false, int64_t unit = -1) {
    if (static_cast<int64_t>(T.masked_sum.size()) <= masked_index) {
      T.masked_sum.resize(masked_index + 1, 0);
      T.masked_meta.resize(masked_index + 1);
    }
    T.masked_sum[masked_index] += count;
    T.masked_meta[masked_index] = {unit < 0 ? g.page_size : unit, (g.memory == 0) | (write ? 2 : 0)};
    ++masked_index;
  }
  void count_static(const AddrGen& g, int64_t count, bool write = false) {
    int64_t bytes = count * g.page_size;
    counters.noc_bytes += bytes;
    if (g.memory == 0) counters.dram_bytes += bytes;
    if (g.memory == 0 && write) counters.dram_written += bytes;
  }
  void note_write(int memory, int64_t group, int64_t lo, int64_t hi) {
    if (R.mem[memory].watch.empty()) return;
    auto [it, added] = T.writes.try_emplace(ThreadAcc::Key{steps, group, memory}, lo, hi);
    if (!added) {
      it->second.first = std::min(it->second.first, lo);
      it->second.second = std::max(it->second.second, hi);
    }
  }

  TTC_NOINLINE void op_noc_read_pages(int kernel, const Instr& in);
  TTC_NOINLINE void op_noc_read_tiles(int kernel, const Instr& in);
  TTC_NOINLINE void op_noc_read_tiles_indexed(int kernel, const Instr& in);
  TTC_NOINLINE void op_noc_read_rows_indexed(int kernel, const Instr& in);
  TTC_NOINLINE void op_noc_write_tiles(int kernel, const Instr& in);
  TTC_NOINLINE void op_noc_write_rows(int kernel, const Instr& in);
  TTC_NOINLINE void op_noc_write_row_segments(int kernel, const Instr& in);

  // -- Dst ----------------------------------------------------------------------------------------

  int64_t dst_slots(int64_t first, int64_t count) const {
    if (first < 0 || first + count > HALF_DST) fail(DST_SLOTS, -1, {first, count});
    return dst_half * HALF_DST + first;
  }
  // The slots a math op writes; kReads: it reads them too (accumulates, or writes only part of them).
  template <bool kReads>
  int64_t math_slots(int64_t first, int64_t count) {
    if (dst_state != ACQUIRED) fail(MATH_STATE, -1, {dst_state});
    int64_t base = dst_slots(first, count);
    uint32_t mask = slot_mask(base, count);
    if (kReads) {
      filled(base, count);
    } else {
      dst_stale &= ~mask;  // overwritten whole: the NaN fill it skipped could never be seen
    }
    dst_written |= mask;
    return base;
  }
  static uint32_t slot_mask(int64_t base, int64_t count) {
    return count > 0 ? ((count >= 32 ? 0xFFFFFFFFu : (1u << count) - 1) << base) : 0u;
  }
  // Slots about to be read: the NaN fills an acquire left pending are done now.
  void filled(int64_t base, int64_t count) {
    uint32_t pending = dst_stale & slot_mask(base, count);
    if (!pending) return;
    dst_stale &= ~pending;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (; pending; pending &= pending - 1) {
      int slot = __builtin_ctz(pending);
      std::fill(dst_tile(slot), dst_tile(slot + 1), nan);
    }
  }
  float* dst_tile(int64_t slot) { return dst.data() + slot * TILE_ELEMS; }
  void transition(int expected, int next, int64_t op_code) {
    if (dst_state != expected) fail(DST_PROTOCOL, -1, {op_code, dst_state, expected});
    dst_state = next;
  }
  // Interpreter `unpack_front`: tiles at the waited-window offsets (offs) as the FPU's sources get them.
  Format unpack_front(int64_t index, std::vector<float>& out);
  // unpack_front's checks, and the pages (slot pointers) of its tiles
  Format front_pages(int64_t index, std::vector<const uint8_t*>& out);
  void unpack_pages(const std::vector<const uint8_t*>& in, Format fmt, std::vector<float>& out);
  void to_dst(float* tile, Format cb_format) const {
    // numerics.as_f16 is f16_round elementwise (it only skips values it can prove need no rounding)
    if (E.dst == DstFormat::F16) {
      if (cb_format != Format::F16) dst_round_values(tile, TILE_ELEMS, DstFormat::F16);
    } else if (cb_format == Format::F16) {
      dst_round_values(tile, TILE_ELEMS, DstFormat::BF16);
    }
  }

  TTC_NOINLINE void op_copy(const Instr& in, bool transpose);
  TTC_NOINLINE void op_tilize(const Instr& in);
  TTC_NOINLINE void op_pack_rows(const Instr& in);
  TTC_NOINLINE void op_binary(const Instr& in);
  TTC_NOINLINE void op_matmul(const Instr& in);
  TTC_NOINLINE void op_reduce(const Instr& in);
  TTC_NOINLINE void op_sfpu(const Instr& in);
  TTC_NOINLINE void op_sfpu_binary(const Instr& in);
  TTC_NOINLINE void op_fill(const Instr& in);
  TTC_NOINLINE void op_mask(const Instr& in);
  TTC_NOINLINE void op_pack(const Instr& in);
};

void Core::start(int64_t index) {
  core = index;
  bank = E.banks[core];
  own_l1 = R.mem[1].data + bank * R.mem[1].stride;
  for (int index : E.cb_order) {  // the CBs' bytes are read and written in place: no poison left unfilled there
    const CBConfig& c = E.cbs[index];
    unpoison(R.mem[1], bank, c.address, c.page_size * c.pages, false);
  }
  for (auto& c : cb) c = CBState{};
  for (int i = 0; i < KERNELS; ++i) {
    k[i] = KernelState{};
    k[i].pc = E.kernel_start[i];
  }
  for (int i = 0; i < KERNELS; ++i) {  // the core's runtime arguments (cold: a program's are read once per run)
    const int64_t at = E.arg_offsets[i][core];
    if (at < E.arg_offsets[i][core + 1]) __builtin_prefetch(E.arg_values[i].data() + at);
  }
  dst_state = RELEASED;
  dst_half = 1;
  dst_written = 0xFFFF;  // Dst holds what the last program left: every slot is NaN-filled when acquired
  dst_stale = 0;
  steps = 0;
  masked_index = 0;
  counters = Counters{};
  f16_overflow = false;
}

void Core::record(Fault& f) {
  f.position = position;
  if (f.kernel == -1) f.kernel = cur_kernel;  // -2: none named
  if (f.op == -1) f.op = cur_op;
  int64_t best = R.best.load(std::memory_order_relaxed);
  while (position < best && !R.best.compare_exchange_weak(best, position, std::memory_order_relaxed)) {
  }
  R.faults[core] = std::move(f);
}

void Core::run(int64_t index) {
  start(index);
  try {
    int live[KERNELS] = {0, 1, 2};
    int n_live = KERNELS;
    while (n_live) {
      int64_t before = steps;
      bool progressed = false;
      int snapshot[KERNELS];
      int n_snapshot = n_live;
      std::copy(live, live + n_live, snapshot);
      for (int s = 0; s < n_snapshot; ++s) {
        int kernel = snapshot[s];
        if (resume(kernel) == FINISHED) {
          int* end = std::remove(live, live + n_live, kernel);
          n_live = static_cast<int>(end - live);
          progressed = true;
          finish(kernel);
        }
      }
      if (n_live && !progressed && steps == before) deadlock(live, n_live);
    }
    check_drained();
  } catch (Fault& f) {
    record(f);
  } catch (Stop&) {
  }
  R.counters[core] = counters;
}

Core::Resume Core::resume(int kernel) {
  cur_kernel = kernel;
  for (;;) {
    Resume r = step(kernel);
    if (r != CONTINUE) return r;
  }
}

// Spins until done() holds or `us` microseconds passed (giving the core away at every poll after the first 20 us:
// on a loaded machine the thread waited for, or another process, may need it); whether it held.
template <typename Done>
bool spin_for(Done done, double us) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 63) {
      double waited = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      if (waited > us) return done();
      if (waited > 20) std::this_thread::yield();
    }
  }
}

// Waits until done() holds: spin_for a millisecond, then polls with short sleeps (a long serial stretch of the
// other side).
template <typename Done>
void wait_until(Done done) {
  if (spin_for(done, 1000)) return;
  while (!done()) std::this_thread::sleep_for(std::chrono::microseconds(20));
}

// A lockstep program on `workers` threads. Worker 0 (the caller's thread) coordinates: it walks the lockstep
// schedule and runs every inter-core op on all cores itself, in grid order. The stretches of instructions up to
// the next inter-core op (run_segment: what happens there touches only the core's own state, and memory no other
// core writes between two inter-core ops) are phases that every worker takes part in: each claims the phase's
// cores a few at a time (a worker that comes late, on a loaded machine, finds them taken, and the coordinator never
// waits for it, only for cores claimed and not finished). With several workers every core has its own op
// temporaries and ThreadAcc, so that any thread can run it; the cores are made and destroyed on the coordinator's
// thread (their scratch sets are its). The result is the same for any number of workers: cores of a phase do not
// interact, the inter-core ops keep their order, and what is combined across cores (faults by their key, counts,
// written ranges) does not depend on which thread ran what.
class Lockstep {
 public:
  // acc: one per worker (workers == 1) or one per core
  Lockstep(Run& run, std::vector<ThreadAcc>& acc, int workers)
      : R(run), E(run.E), workers_(workers), n_(run.E.cores), cs_(run.E.cores), results_(run.E.cores),
        shares_(new Share[workers]) {
    for (int64_t c = 0; c < n_; ++c) {
      cs_[c] = std::make_unique<Core>(R, acc[workers > 1 ? c : 0], static_cast<size_t>(c), workers > 1);
      cs_[c]->start(c);
    }
  }

  void work(int w) {
    if (w == 0) {
      try {
        coordinate();
      } catch (...) {
        stop();
        throw;
      }
      stop();
      return;
    }
    uint64_t seen = 0;
    for (;;) {
      auto published = [&] {
        return (shares_[0].claim.load(std::memory_order_seq_cst) >> 32) != seen ||
               stopping_.load(std::memory_order_seq_cst);
      };
      if (!spin_for(published, kWorkerSpinUs)) {
        // a long serial stretch (or a loaded machine): sleep until the next phase; the coordinator wakes a
        // sleeping worker when it publishes one (sleeping_ and the claims are sequentially consistent: either it sees
        // sleeping_, or the worker sees the new phase before it waits)
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleeping_.store(true, std::memory_order_seq_cst);
        while (!published()) wake_.wait_for(lock, std::chrono::milliseconds(1));
        sleeping_.store(false, std::memory_order_seq_cst);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = shares_[0].claim.load(std::memory_order_acquire) >> 32;
      take(w, seen);
    }
  }

  // how long the coordinator waited for cores other threads had claimed
  double waited_us() const { return waited_us_; }

 private:
  Run& R;
  const Encoded& E;
  const int workers_;
  const int64_t n_;
  std::vector<std::unique_ptr<Core>> cs_;
  std::vector<Core::Resume> results_;
  // Each worker's share of the cores (worker w: cores n * w / workers up to the next share's), claimed first by
  // it and then by the others: a core runs on the same thread phase after phase while no thread is late, its
  // state staying in that CPU's caches. A share's word holds the phase's generation (high 32 bits) and the share's
  // next unclaimed core (low 32 bits); worker 0's word, stored last, publishes the phase.
  struct alignas(64) Share {
    std::atomic<uint64_t> claim{0};
  };
  std::unique_ptr<Share[]> shares_;
  int64_t share_begin(int w) const { return n_ * w / workers_; }
  std::atomic<int64_t> finished_{0};  // cores of the phase run to their next inter-core op
  std::atomic<bool> stopping_{false};
  int kernel_ = 0;  // the phase's kernel (written before the phase is published in the claims)
  // what the phase's cores run (coordinate): up to their next inter-core op (SEGMENT), first the inter-core op they
  // stand at (STEP_FIRST), or that op alone (STEP_ALONE)
  enum Mode { SEGMENT, STEP_FIRST, STEP_ALONE };
  Mode mode_ = SEGMENT;
  std::vector<int64_t> mcast_owner_;  // mcast_disjoint's grid
  std::atomic<bool> faulted_{false};
  std::exception_ptr error_;
  std::mutex error_mutex_;

  static constexpr double kWorkerSpinUs = 50;  // a worker's spin for the next phase before it sleeps
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<bool> sleeping_{false};
  double waited_us_ = 0;  // the coordinator's waits for claimed cores

  // the workers see the change (a new phase or the stop)
  void wake() {
    if (sleeping_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
  }

  void stop() {
    stopping_.store(true, std::memory_order_seq_cst);
    wake();
  }

  // fn on one core, its fault recorded (every core faulting at an op is recorded)
  template <typename Fn>
  void on(int64_t c, Fn&& fn) {
    try {
      fn(*cs_[c]);
    } catch (Fault& f) {
      cs_[c]->record(f);
      faulted_.store(true, std::memory_order_relaxed);
    } catch (Stop&) {
      faulted_.store(true, std::memory_order_relaxed);
    }
  }

  // fn on every core in grid order, on this thread
  template <typename Fn>
  void each(Fn&& fn) {
    for (int64_t c = 0; c < n_; ++c) on(c, fn);
  }

  // the cores of phase `generation` worker w claims, each up to its next inter-core op: its own share's, then
  // what is left of the others'
  void take(int w, uint64_t generation) {
    for (int i = 0; i < workers_; ++i) {
      const int share = (w + i) % workers_;
      if (!take_share(share, generation)) return;
    }
  }

  // claims and runs cores of a share, a few at a time (a phase's segments are often short: a claim per core made
  // them contend); false when the phase is over
  bool take_share(int share, uint64_t generation) {
    std::atomic<uint64_t>& word = shares_[share].claim;
    const int64_t last = share_begin(share + 1);
    const int64_t chunk = std::max<int64_t>(1, (last - share_begin(share)) / 4);
    for (;;) {
      uint64_t claim = word.load(std::memory_order_acquire);
      int64_t c, end;
      do {
        if ((claim >> 32) != generation) return false;  // a later phase: this one is done
        c = static_cast<int64_t>(claim & 0xFFFFFFFFu);
        if (c >= last) return true;
        end = std::min(last, c + chunk);
      } while (!word.compare_exchange_weak(claim, claim + static_cast<uint64_t>(end - c), std::memory_order_acq_rel,
                                           std::memory_order_acquire));
      try {
        for (int64_t i = c; i < end; ++i)
          on(i, [&](Core& core) {
            results_[i] = mode_ == STEP_ALONE ? core.step_inter_core(kernel_)
                                              : core.run_segment(kernel_, mode_ == STEP_FIRST);
          });
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        faulted_.store(true, std::memory_order_relaxed);
      }
      finished_.fetch_add(end - c, std::memory_order_acq_rel);
    }
  }

  // every core up to its next inter-core op: what the last core in grid order that got there returned
  Core::Resume segment_all(int kernel, Mode mode) {
    for (int64_t c = 0; c < n_; ++c) results_[c] = Core::Resume::NONE;
    kernel_ = kernel;
    mode_ = mode;
    finished_.store(0, std::memory_order_relaxed);
    const uint64_t generation = (shares_[0].claim.load(std::memory_order_relaxed) >> 32) + 1;
    for (int w = workers_ - 1; w >= 0; --w)
      shares_[w].claim.store(generation << 32 | static_cast<uint64_t>(share_begin(w)), std::memory_order_seq_cst);
    if (workers_ > 1) wake();
    take(0, generation);
    if (workers_ > 1 && finished_.load(std::memory_order_acquire) != n_) {
      const auto start = std::chrono::steady_clock::now();
      wait_until([&] { return finished_.load(std::memory_order_acquire) == n_; });
      waited_us_ += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    }
    if (error_) std::rethrow_exception(error_);
    Core::Resume r = Core::Resume::CONTINUE;
    for (int64_t c = 0; c < n_; ++c)
      if (results_[c] != Core::Resume::NONE) r = results_[c];
    return r;
  }

  void coordinate();

  // Whether the multicast `in` that every core stands at writes disjoint places: the enabled senders' rectangles
  // (valid ones) share no receiver and hold no other sender. Then the senders' copies, semaphore sets and landing
  // marks touch different cores' memory, and the order of the senders does not matter.
  bool mcast_disjoint(const Instr& in) {
    const int64_t* f = in.f;
    const int64_t gx = f[12], gy = f[13];
    if (gx <= 0 || gy <= 0 || gx * gy < n_) return false;
    mcast_owner_.assign(static_cast<size_t>(gx * gy), -1);  // -1: untouched, -2: a sender, else its sender
    for (int64_t c = 0; c < n_; ++c) {
      const Core& core = *cs_[c];
      if (!core.enabled(f[6])) continue;
      int64_t rect[4];
      if (!core.mcast_rect(f, rect)) return false;  // the fault, in grid order
      const int64_t x0 = rect[0], y0 = rect[1], x1 = rect[2], y1 = rect[3];
      if (mcast_owner_[c] != -1) return false;  // an earlier sender's receiver
      mcast_owner_[c] = -2;
      for (int64_t y = y0; y <= y1; ++y)
        for (int64_t x = x0; x <= x1; ++x) {
          const int64_t r = y * gx + x;
          if (r == c) continue;
          if (mcast_owner_[r] != -1) return false;
          mcast_owner_[r] = c;
        }
    }
    return true;
  }
};

void Lockstep::coordinate() {
  using Resume = Core::Resume;
  const int64_t n = n_;
  auto& cs = cs_;
  auto faulted = [&] { return faulted_.load(std::memory_order_relaxed); };
  int live[KERNELS] = {0, 1, 2};
  int n_live = KERNELS;
  while (n_live && !faulted()) {
    int64_t before = cs[0]->steps;
    bool progressed = false;
    int snapshot[KERNELS];
    int n_snapshot = n_live;
    std::copy(live, live + n_live, snapshot);
    for (int s = 0; s < n_snapshot && !faulted(); ++s) {
      int kernel = snapshot[s];
      Resume r = Resume::CONTINUE;
      Mode mode = SEGMENT;
      while (r == Resume::CONTINUE && !faulted()) {
        // up to the next inter-core op, each core on its own; every core stops at the same instruction
        r = segment_all(kernel, mode);
        mode = SEGMENT;
        if (r != Resume::CONTINUE || faulted()) break;
        const Instr& in = E.code[cs[0]->k[kernel].pc];
        bool force = false;
        int64_t short_core = -1, holds = 0;
        if (in.f[0] == SEM_WAIT && in.f[3] >= 0 && in.f[3] < NUM_SEMAPHORES)
          for (int64_t c = 0; c < n && !force; ++c)
            if (cs[c]->enabled(in.f[2]) && R.semaphores[c * NUM_SEMAPHORES + in.f[3]] < in.f[4])
              force = true, short_core = c, holds = R.semaphores[c * NUM_SEMAPHORES + in.f[3]];
        // An inter-core op that touches only the core's own state (semaphore_set, a semaphore_wait that passes on
        // every core) or adds to another core's semaphore (semaphore_inc: the additions commute, and its fault
        // depends on the core's own registers) runs first in the next phase, on each core's thread, instead of on
        // this one for every core (whose state then moved between the CPUs' caches: ResNet-50's 56-core
        // matmuls spent a sixth of their time there on 2 threads). A multicast writes other cores' memory in grid
        // order, and a blocked wait ends the kernel's turn: those run here.
        if (!force && in.f[0] != NOC_MCAST) {
          mode = STEP_FIRST;
          continue;
        }
        // A multicast whose senders write disjoint places runs as a phase of its own (every copy lands before any
        // core goes on), each sender on its core's thread.
        if (in.f[0] == NOC_MCAST && workers_ > 1 && mcast_disjoint(in)) {
          r = segment_all(kernel, STEP_ALONE);
          continue;
        }
        each([&](Core& c) {
          c.cur_kernel = kernel;
          c.force_block = force, c.force_core = short_core, c.force_holds = holds;
          r = c.step(kernel);
        });
      }
      if (faulted()) break;
      if (r == Resume::FINISHED) {
        int* end = std::remove(live, live + n_live, kernel);
        n_live = static_cast<int>(end - live);
        progressed = true;
        each([&](Core& c) { c.finish(kernel); });
      }
    }
    if (!faulted() && n_live && !progressed && cs[0]->steps == before)
      each([&](Core& c) { c.deadlock(live, n_live); });
  }
  if (!faulted()) each([&](Core& c) { c.check_drained(); });
  for (int64_t c = 0; c < n; ++c) R.counters[c] = cs[c]->counters;
}

Core::Resume Core::step(int kernel) {
  KernelState& K = k[kernel];
  {
    const Instr& in = E.code[K.pc];
    int64_t opc = in.f[0];
    if (opc == END) return FINISHED;
    if (opc == FOR_END) {  // next trip, or past the loop (a loop counts one step, when it starts)
      const Instr& head = E.code[in.f[2]];
      int64_t trip = ++regs[head.f[7]];
      if (trip < head.f[5]) {
        regs[head.f[2]] = wrap_add(head.f[3], wrap_mul(trip, head.f[4]));
        K.pc = in.f[2] + 1;
      } else {
        ++K.pc;
      }
      return CONTINUE;
    }
    cur_op = in.f[1];
    if (!K.retry) {
      ++steps;
      position = steps * 4;
      if (position > R.best.load(std::memory_order_relaxed)) throw Stop{};
      if (steps > R.budget) fail(RUNAWAY, -1, {R.budget});
    }
    K.retry = false;
    bool blocked = false;
    execute(kernel, in, blocked);
    // a compute op of an f16 program rounded a finite value to Float16 and got inf (numerics.h): a fault at
    // this op, reported on every core as the interpreter does (its numerics run on all cores at once)
    if (E.dst == DstFormat::F16 && f16_overflow) {
      f16_overflow = false;
      fail(F16_OVERFLOW, -1, {}, 0, 0, true);
    }
    if (blocked) {
      K.retry = true;
      return BLOCKED;
    }
    ++K.pc;
  }
  return CONTINUE;
}

void Core::finish(int kernel) {
  position = steps * 4 + 1;
  if (position > R.best.load(std::memory_order_relaxed)) throw Stop{};
  cur_kernel = kernel;
  cur_op = -1;
  const KernelState& K = k[kernel];
  if (K.pending_writes) {
    int64_t index = __builtin_ctz(K.pending_writes);
    fail(END_PENDING_WRITES, index, {index});
  }
  if (kernel == COMPUTE && dst_state != RELEASED) fail(END_DST, -1, {dst_state});
}

void Core::deadlock(const int* live, int n_live) {
  position = DEADLOCK_POSITION;
  cur_kernel = -1;
  cur_op = -1;
  Fault f;
  f.kind = DEADLOCK;
  f.kernel = -2;  // none named (the text names each blocked kernel)
  f.op = -2;
  f.params[0] = n_live;
  for (int i = 0; i < n_live; ++i) {
    const KernelState& K = k[live[i]];
    int64_t* p = f.params + 1 + 7 * i;
    p[0] = live[i];
    p[1] = K.blocked_op;
    p[2] = K.blocked_cb;
    p[3] = K.blocked_want;
    p[4] = K.blocked_what;
    p[5] = K.blocked_what == 2 ? K.blocked_holds : cb[K.blocked_cb].filled;
    p[6] = K.blocked_what == 2 ? K.blocked_core : E.cbs[K.blocked_cb].pages;
  }
  throw f;
}

void Core::check_drained() {
  position = DRAINED_POSITION;
  cur_kernel = -2;
  cur_op = -2;
  for (int index : E.cb_order) {
    const CBState& c = cb[index];
    if (c.filled || c.reserved) fail(DRAINED, index, {c.filled, c.reserved});
  }
}

void Core::execute(int kernel, const Instr& in, bool& blocked) {
  const int64_t* f = in.f;
  KernelState& K = k[kernel];
  switch (f[0]) {
    // -- scalars
    case GET_ARG: {
      int64_t lo = E.arg_offsets[kernel][core], n = E.arg_offsets[kernel][core + 1] - lo, index = f[3];
      if (n <= index) fail(ARG_MISSING, -1, {index});
      if (index < 0) {  // Python's negative index
        if (n + index < 0) missing_argument(index);
        index += n;
      }
      regs[f[2]] = E.arg_values[kernel][lo + index];
      return;
    }
    case CONSTANT:
      regs[f[2]] = f[3];
      return;
    case BUFFER_ADDRESS: {
      int64_t n = static_cast<int64_t>(R.addresses.size());
      if (f[3] < 0 || f[3] >= n) fail(BUFFER_OPERAND, -1, {f[3], n});
      regs[f[2]] = R.addresses[f[3]];
      return;
    }
    case ADDI:
      regs[f[2]] = wrap_add(regs[f[3]], regs[f[4]]);
      return;
    case MULI:
      regs[f[2]] = wrap_mul(regs[f[3]], regs[f[4]]);
      return;
    case MINI:
      regs[f[2]] = std::min(regs[f[3]], regs[f[4]]);
      return;
    case FOR_BEGIN:
      if (f[5] <= 0) {
        K.pc = f[6];  // FOR_END; the caller steps past it
      } else {
        regs[f[7]] = 0;
        regs[f[2]] = f[3];
      }
      return;
    // -- circular buffers
    case CB_RESERVE_BACK: {
      const CBConfig& c = config(f[2]);
      CBState& s = cb[f[2]];
      int64_t n = f[3];
      if (n > c.pages) fail(RESERVE_TOO_MANY, f[2], {n, c.pages});
      if (c.pages - s.filled < n) {
        blocked = true;
        K.blocked_op = f[1], K.blocked_cb = f[2], K.blocked_want = n, K.blocked_what = 0;
        return;
      }
      s.reserved = std::max(s.reserved, n);
      return;
    }
    case CB_PUSH_BACK: {
      const CBConfig& c = config(f[2]);
      CBState& s = cb[f[2]];
      int64_t n = f[3];
      if (n > s.reserved) fail(PUSH_TOO_MANY, f[2], {n, s.reserved});
      if (K.pending_reads & (1u << f[2])) fail(PUSH_PENDING_READS, f[2], {});
      if (!R.unlanded.empty() && R.unlanded[core * NUM_CBS + f[2]]) fail(PUSH_UNLANDED, f[2], {});
      s.filled += n;
      s.reserved -= n;
      s.back = ring(s.back + n, c.pages);
      return;
    }
    case CB_WAIT_FRONT: {
      const CBConfig& c = config(f[2]);
      CBState& s = cb[f[2]];
      int64_t n = f[3];
      if (n > c.pages) fail(WAIT_TOO_MANY, f[2], {n, c.pages});
      if (s.filled < n) {
        blocked = true;
        K.blocked_op = f[1], K.blocked_cb = f[2], K.blocked_want = n, K.blocked_what = 1;
        return;
      }
      s.waited = std::max(s.waited, n);
      return;
    }
    case CB_POP_FRONT: {
      const CBConfig& c = config(f[2]);
      CBState& s = cb[f[2]];
      int64_t n = f[3];
      if (n > s.waited) fail(POP_TOO_MANY, f[2], {n, s.waited});
      if (K.pending_writes & (1u << f[2])) fail(POP_PENDING_WRITES, f[2], {});
      s.filled -= n;
      s.waited -= n;
      s.front = ring(s.front + n, c.pages);
      return;
    }
    // -- data movement
    case ADDRGEN: {
      AddrGen& g = agens[f[2]];
      g.base = regs[f[3]];
      g.page_size = f[4];
      g.memory = static_cast<int>(f[5]);
      g.format = static_cast<int>(f[6]);
      g.layout = static_cast<int>(f[7]);
      g.slot = -2;
      return;
    }
    case NOC_READ_TILES:
      op_noc_read_tiles(kernel, in);
      return;
    case NOC_READ_PAGES:
      op_noc_read_pages(kernel, in);
      return;
    case NOC_READ_TILES_INDEXED:
      op_noc_read_tiles_indexed(kernel, in);
      return;
    case NOC_READ_ROWS_INDEXED:
      op_noc_read_rows_indexed(kernel, in);
      return;
    case NOC_WRITE_TILES:
      op_noc_write_tiles(kernel, in);
      return;
    case NOC_WRITE_ROWS:
      if (f[8] >= 0)
        op_noc_write_row_segments(kernel, in);
      else
        op_noc_write_rows(kernel, in);
      return;
    case NOC_READ_BARRIER:
      K.pending_reads = 0;
      return;
    case NOC_WRITE_BARRIER:
      K.pending_writes = 0;
      return;
    // -- Dst ownership
    case TILE_REGS_ACQUIRE: {
      transition(RELEASED, ACQUIRED, TILE_REGS_ACQUIRE);
      dst_half ^= 1;
      uint32_t half = (dst_written >> (dst_half * HALF_DST)) & 0xFFu;
      if (half) {  // slots math wrote since their last fill (and those between them) become NaN again: the
                   // fill waits until a slot is read (an op that overwrites a slot whole skips it)
        int first = __builtin_ctz(half), last = 31 - __builtin_clz(half);
        dst_stale |= slot_mask(dst_half * HALF_DST + first, last - first + 1);
        dst_written &= ~(0xFFu << (dst_half * HALF_DST));
      }
      return;
    }
    case TILE_REGS_COMMIT:
      transition(ACQUIRED, COMMITTED, TILE_REGS_COMMIT);
      return;
    case TILE_REGS_WAIT:
      transition(COMMITTED, WAITED, TILE_REGS_WAIT);
      return;
    case TILE_REGS_RELEASE:
      transition(WAITED, RELEASED, TILE_REGS_RELEASE);
      return;
    // -- compute
    case COPY_TILES:
      op_copy(in, false);
      return;
    case TRANSPOSE_TILES:
      op_copy(in, true);
      return;
    case TILIZE_TILES:
      op_tilize(in);
      return;
    case PACK_ROWS:
      op_pack_rows(in);
      return;
    case BINARY_TILES:
      op_binary(in);
      return;
    case MATMUL_TILES:
      op_matmul(in);
      return;
    case REDUCE_TILES:
      op_reduce(in);
      return;
    case SFPU_TILES:
      op_sfpu(in);
      return;
    case SFPU_BINARY_TILES:
      op_sfpu_binary(in);
      return;
    case FILL_TILES:
      op_fill(in);
      return;
    case MASK_TILES:
      op_mask(in);
      return;
    case PACK_TILES:
      op_pack(in);
      return;
    case RAISE:
      fail(RAISED, f[3], {f[2]});
    // -- semaphores and multicast (lockstep programs only: Lockstep)
    case SEM_SET:
      if (enabled(f[2])) semaphore(core, f[3]) = f[4];
      return;
    case SEM_WAIT:
      if (force_block) {  // Lockstep found a short core
        blocked = true;
        K.blocked_op = f[1], K.blocked_cb = f[3], K.blocked_want = f[4], K.blocked_what = 2;
        K.blocked_core = force_core, K.blocked_holds = force_holds;
      } else if (!R.unlanded.empty() && enabled(f[2])) {  // it has seen every multicast into it land
        std::fill_n(R.unlanded.begin() + core * NUM_CBS, NUM_CBS, uint8_t{0});
      }
      return;
    case SEM_INC:
      op_sem_inc(in);
      return;
    case NOC_MCAST:
      op_noc_mcast(kernel, in);
      return;
    default:
      unknown_opcode(f[0]);
  }
}

// ------------------------------------------------------------------------------------------ NoC

// Out of line: inlined, its fault record's four values (stored as one 32-byte vector) made every instruction's
// dispatch realign the stack.
void Core::op_sem_inc(const Instr& in) {
  const int64_t* f = in.f;
  if (!enabled(f[4])) return;
  int64_t x = regs[f[2]], y = regs[f[3]], gx = f[7], gy = f[8];
  if (x < 0 || x >= gx || y < 0 || y >= gy) fail(SEM_TARGET, -1, {x, y, gx, gy});
  // (atomic: a lockstep phase may run the semaphore_incs of several cores on several threads)
  __atomic_fetch_add(&semaphore(y * gx + x, f[5]), f[6], __ATOMIC_RELAXED);
}

void Core::op_noc_mcast(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const int64_t index = f[7];
  const CBConfig& c = config(index);
  const bool en = enabled(f[6]);
  int64_t rect[4];
  const bool inside = mcast_rect(f, rect);
  const int64_t x0 = rect[0], y0 = rect[1], x1 = rect[2], y1 = rect[3], gx = f[12], gy = f[13];
  if (en && !inside) fail(MCAST_RECT, index, {x0, y0, x1, y1, gx, gy});
  const int64_t n = std::max<int64_t>(f[9], 0);
  page_range(f[8], n);
  check_window(index, offs.data(), n, cb[index].reserved, false, 1);
  if (en && (k[kernel].pending_reads & (1u << index))) fail(MCAST_PENDING_READS, index, {}, 2);
  int64_t receivers = 0;
  if (en) {
    const Memory& l1 = R.mem[1];
    for (int64_t y = y0; y <= y1; ++y)
      for (int64_t x = x0; x <= x1; ++x) {
        int64_t r = y * gx + x;
        if (r == core) continue;
        ++receivers;
        uint8_t* dst = l1.data + E.banks[r] * l1.stride;
        for (int64_t i = 0; i < n; ++i) {
          int64_t at = c.address + back_slot(index, offs[i]) * c.page_size;
          std::memcpy(dst + at, own_l1 + at, c.page_size);
        }
        if (f[10] >= 0) semaphore(r, f[10]) = f[11];
        R.unlanded[r * NUM_CBS + index] = 1;
      }
    if (receivers) counters.mcast_sent += n * c.page_size;
    counters.mcast_fanout = std::max(counters.mcast_fanout, receivers);
  }
  AddrGen g;
  g.page_size = c.page_size;
  g.memory = 1;
  count_masked(g, receivers ? n * (1 + receivers) : 0);
}

// Interpreter `_locate`'s layout check and `Memory.locate`'s choice of path: the sharded buffer at the
// base, if any (layout_at and locate both look the base up among the sharded buffers' addresses).
const Sharded* Core::resolve(const AddrGen& g, int64_t cb_index, int64_t stage) {
  const Memory& m = R.mem[g.memory];
  const Sharded* found = nullptr;
  for (const Sharded& s : m.sharded)
    if (s.address == g.base) found = &s;
  int actual = found ? found->layout : INTERLEAVED;
  if (actual != g.layout) fail(LAYOUT_MISMATCH, cb_index, {g.layout, actual, g.base}, stage, 0, true);
  return found;
}

// Memory.locate (and _locate_sharded) of one page: its bank and byte offset, or a fault naming the page.
void Core::locate_slow(const AddrGen& g, const Sharded* sh, int64_t page, Access access, int64_t cb_index,
                       int64_t stage, int64_t group, bool all_cores, int64_t& out_bank, int64_t& out_offset) {
  const Memory& m = R.mem[g.memory];
  if (sh) {
    int64_t rows = floordiv(page, sh->cols), cols = floormod(page, sh->cols);
    int64_t shard = floordiv(rows, sh->shard_rows) * sh->per_row + floordiv(cols, sh->shard_cols);
    if (page < 0 || page >= sh->num_pages || shard >= static_cast<int64_t>(sh->banks.size()))
      fail(OUT_OF_BOUNDS_SHARDED, cb_index, {g.memory, access, page, sh->address}, stage, group, all_cores);
    out_bank = sh->banks[shard];
    out_offset = sh->address +
                 (floormod(rows, sh->shard_rows) * sh->shard_cols + floormod(cols, sh->shard_cols)) * sh->page_size;
    return;
  }
  int64_t b, row;
  m.by_banks(page, row, b);
  int64_t offset = wrap_add(g.base, wrap_mul(row, g.page_size));
  if (g.slot == -2) {  // the buffer table's slot of the base, kept for the generator's next page
    auto it = std::upper_bound(m.starts.begin(), m.starts.end(), g.base);
    g.slot = static_cast<int64_t>(it - m.starts.begin()) - 1;
  }
  int64_t slot = g.slot;
  bool found = slot >= 0 && g.base < m.ends[slot];
  int64_t limit = offset;
  if (!m.starts.empty()) {
    int64_t s = std::max<int64_t>(slot, 0);
    int64_t in_bank, unused;
    m.by_banks(m.counts[s] - b + m.banks - 1, in_bank, unused);
    limit = m.starts[s] + in_bank * m.sizes[s];
  }
  if (!found || page < 0 || offset + g.page_size > limit)
    fail(OUT_OF_BOUNDS, cb_index, {g.memory, access, page, g.page_size, g.base, found ? 1 : 0}, stage, group,
         all_cores);
  out_bank = b;
  out_offset = offset;
}

void Core::clean_range(const Memory& m, const AddrGen& g, int64_t& lo, int64_t& hi) {
  lo = hi = 0;
  if (!m.marks || g.slot < 0 || g.slot >= static_cast<int64_t>(m.starts.size())) return;
  const int64_t start = m.starts[g.slot], end = m.ends[g.slot];
  Region* region = nullptr;
  for (Region& r : regions)
    if (r.memory == m.id && r.start == start && r.end == end) region = &r;
  if (!region) {
    if (regions.size() < kRegions) regions.push_back(Region{m.id, start, end, 0});
    return;
  }
  if (region->state == 0) {  // the second read: look at the region's marks in every bank
    region->state = 2;
    const int64_t first = std::max<int64_t>(start, 0) / POISON_BLOCK;
    const int64_t last = std::min((end - 1) / POISON_BLOCK, m.blocks - 1);  // blocks past it are never marked
    const int64_t count = last - first + 1;
    if (end <= start || count <= 0) {
      region->state = 1;
    } else if (count * m.banks <= kCleanScan) {
      uint64_t any = 0;
      for (int64_t b = 0; b < m.banks && !any; ++b) {
        const uint8_t* marks = m.marks + b * m.blocks + first;
        int64_t i = 0;
        for (; i + 8 <= count; i += 8) {
          uint64_t word;
          std::memcpy(&word, marks + i, 8);
          any |= word;
        }
        for (; i < count; ++i) any |= __atomic_load_n(marks + i, __ATOMIC_RELAXED);
      }
      if (!any) region->state = 1;
    }
  }
  if (region->state == 1) lo = start, hi = end;
}

// A NoC read of buffer pages page_list[0..n) into the reserved back of a CB from cb_offset (the
// interpreter's `_read_into_cb` and its masked variants): pages not wanted are located as page 0 (as the
// interpreter does) and zero-filled or left as they are.
void Core::noc_read(int kernel, const AddrGen& g, int64_t cb_index, int64_t cb_offset, int64_t n,
                    const int64_t* page_list, const uint8_t* want, bool zero_unwanted, CountMode mode, bool with_bank,
                    int64_t stage, bool segmented, int64_t seg_offset, int64_t seg_size) {
  page_range(cb_offset, n);
  check_window(cb_index, offs.data(), n, cb[cb_index].reserved, false, stage);
  if (segmented) {  // the format, the segment's two checks, then the pages: stages after the window's, in order
    check_format(g, cb_index, stage + 1);
    check_segment(g, cb_index, seg_offset, seg_size, stage + 2);
    stage += 2;
  } else {
    check_noc(g, cb_index, stage + 1);
  }
  const Sharded* sh = resolve(g, cb_index, stage + 2);
  located_bank.resize(n);
  located_offset.resize(n);
  for (int64_t i = 0; i < n; ++i)
    locate(g, sh, page_list[i], READ, cb_index, stage + 3, 0, false, located_bank[i], located_offset[i]);
  const Memory& m = R.mem[g.memory];
  int64_t clean_lo = 0, clean_hi = 0;  // a region without poison marks: its pages need no look at them
  if (!sh && n > 0) clean_range(m, g, clean_lo, clean_hi);
  // small pages (rows) from all over the memory, and the poison marks of any pages: their misses overlap
  prefetch_pages(m, n, !segmented && g.page_size <= 256, clean_lo == clean_hi);
  // the bytes of a read: memory_ptr, or inside the clean region its bounds check alone
  auto source = [&](int64_t b, int64_t offset, int64_t size) -> const uint8_t* {
    if (offset >= clean_lo && offset + size <= clean_hi) {
      if (b < 0 || b >= m.banks || offset < 0 || offset + size > m.capacity) outside_memory(size, offset, b, cb_index);
      return m.data + b * m.stride + offset;
    }
    return memory_ptr(m, b, offset, size, cb_index, READ);
  };
  int64_t moved = 0, local = 0;
  const CBConfig& config = E.cbs[cb_index];
  const int64_t cb_page = config.page_size;
  int64_t ring = n > 0 ? back_slot(cb_index, cb_offset) : 0;  // page i's CB slot (the window checks made pages > 0)
  for (int64_t i = 0; i < n; ++i, ring = ring + 1 == config.pages ? 0 : ring + 1) {
    uint8_t* slot = slot_ptr(cb_index, ring);
    bool w = !want || want[i];
    if (segmented) {
      if (w && seg_size) {
        int64_t at = located_offset[i] + seg_offset;
        move_bytes(slot, source(located_bank[i], at, seg_size), seg_size);
        transfer(g, located_bank[i], at, nullptr, seg_size);
      }
      std::memset(slot + (w ? seg_size : 0), 0, cb_page - (w ? seg_size : 0));
      moved += w;
      continue;
    }
    if (w) {
      if (g.page_size > 256 && i + 1 < n) prefetch_page(m, located_bank[i + 1], located_offset[i + 1], g.page_size);
      move_bytes(slot, source(located_bank[i], located_offset[i], g.page_size), g.page_size);
      transfer(g, located_bank[i], located_offset[i], nullptr);
      ++moved;
      if (located_bank[i] == bank) ++local;
    } else if (zero_unwanted) {
      std::memset(slot, 0, g.page_size);
    }
  }
  k[kernel].pending_reads |= 1u << cb_index;
  if (segmented) {
    count_masked(g, moved * seg_size, false, 1);
    return;
  }
  if (with_bank && g.layout != INTERLEAVED) T.local_bytes += local * g.page_size;
  if (mode == COUNT_STATIC)
    count_static(g, n);
  else
    count_masked(g, moved);
}

void Core::op_noc_read_pages(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  config(f[5]);
  int64_t start = regs[f[3]], count = std::max<int64_t>(f[7], 0);
  pages.resize(count);
  for (int64_t i = 0; i < count; ++i) pages[i] = wrap_add(start, i);
  if (f[8] >= 0)  // a row segment of each page
    noc_read(kernel, g, f[5], f[6], count, pages.data(), nullptr, false, COUNT_MASKED, false, 0, true, regs[f[8]],
             regs[f[9]]);
  else
    noc_read(kernel, g, f[5], f[6], count, pages.data(), nullptr, false, COUNT_STATIC, true);
}

void Core::op_noc_read_tiles(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  int64_t start = regs[f[3]];
  tile_block(0, f[7], f[8], f[9], f[10]);
  int64_t n = static_cast<int64_t>(offs.size());
  pages.resize(n);
  if (f[4] < 0) {
    for (int64_t i = 0; i < n; ++i) pages[i] = wrap_add(start, offs[i]);
    config(f[5]);
    noc_read(kernel, g, f[5], f[6], n, pages.data(), nullptr, false, COUNT_STATIC, true);
    return;
  }
  int64_t valid = regs[f[4]], cols = std::max<int64_t>(f[8], 0);
  wanted.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    wanted[i] = (i % cols) < valid;
    pages[i] = wanted[i] ? wrap_add(start, offs[i]) : 0;
  }
  config(f[5]);
  noc_read(kernel, g, f[5], f[6], n, pages.data(), wanted.data(), true, COUNT_MASKED, true);
}

void Core::op_noc_read_tiles_indexed(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  int64_t index_cb = f[7], first = f[8], count = std::max<int64_t>(f[9], 0), sources = f[10], source = f[11];
  const CBConfig& ic = config(index_cb);
  page_range(0, 1);
  check_window(index_cb, offs.data(), 1, cb[index_cb].waited, true);
  if (first < 0 || (first + f[9]) * 4 > ic.page_size)
    fail(INDICES_OUTSIDE, index_cb, {first, f[9], floordiv(ic.page_size, 4)});
  const uint8_t* page = slot_ptr(index_cb, front_slot(index_cb, 0));
  pages.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    int32_t v;
    std::memcpy(&v, page + (first + i) * 4, 4);
    int64_t e = v;
    pages[i] = e < 0 ? -1 - e : e;
  }
  if (sources == 1) {
    config(f[5]);
    noc_read(kernel, g, f[5], f[6], count, pages.data(), nullptr, false, COUNT_STATIC, true);
    return;
  }
  config(f[5]);
  wanted.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    wanted[i] = floormod(pages[i], sources) == source;
    pages[i] = wanted[i] ? floordiv(pages[i], sources) : 0;
  }
  noc_read(kernel, g, f[5], f[6], count, pages.data(), wanted.data(), false, COUNT_MASKED, false);
}

void Core::op_noc_read_rows_indexed(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  int64_t offset = regs[f[3]], valid = regs[f[4]];
  int64_t index_cb = f[7], count = std::max<int64_t>(f[8], 0), wrap = f[9];
  bool pad_negative = f[10] != 0;
  const CBConfig& ic = config(index_cb);
  config(f[5]);
  int64_t entries = floordiv(ic.page_size, 4);
  for (int64_t j = 0; j < count; ++j) {
    int64_t position = offset + j;
    if (j < valid && (position < 0 || position >= entries))
      fail(INDEX_POSITION, index_cb, {position, entries}, 1);
  }
  page_range(0, 1);
  check_window(index_cb, offs.data(), 1, cb[index_cb].waited, true, 2);
  const uint8_t* page = slot_ptr(index_cb, front_slot(index_cb, 0));
  pages.resize(count);
  wanted.resize(count);
  for (int64_t j = 0; j < count; ++j) {
    bool w = j < valid;
    int64_t position = w ? offset + j : 0;
    if (position >= entries) internal("an index page without int32 values", index_cb);
    int32_t v;
    std::memcpy(&v, page + position * 4, 4);
    int64_t index = v;
    if (pad_negative)
      w = w && index >= 0;  // convolution padding: a zero page
    else if (wrap > 0 && index < 0)
      index += wrap;
    wanted[j] = w;
    pages[j] = w ? index : 0;
  }
  bool segmented = f[11] >= 0;
  noc_read(kernel, g, f[5], f[6], count, pages.data(), wanted.data(), true, COUNT_MASKED, false, 3, segmented,
           segmented ? regs[f[11]] : 0, segmented ? regs[f[12]] : 0);
}

void Core::op_noc_write_tiles(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  int64_t start = regs[f[3]], index = f[5], cb_offset = f[6];
  config(index);
  tile_block(0, f[7], f[8], f[9], f[10]);
  int64_t n = static_cast<int64_t>(offs.size());
  pages.resize(n);
  for (int64_t i = 0; i < n; ++i) pages[i] = wrap_add(start, offs[i]);
  page_range(cb_offset, n);
  check_window(index, offs.data(), n, cb[index].waited, true);
  check_noc(g, index, 1);
  bool ragged = f[4] >= 0;  // with valid_cols: the interpreter locates the wanted pages of all cores as one row
  int64_t valid = ragged ? regs[f[4]] : 0, cols = std::max<int64_t>(f[8], 1);
  const Sharded* sh = resolve(g, index, 2);
  located_bank.resize(n);
  located_offset.resize(n);
  int64_t moved = 0, local = 0, lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (ragged && !((i % cols) < valid)) {
      located_bank[i] = -1;  // not written
      continue;
    }
    locate(g, sh, pages[i], WRITE, index, 3, 0, ragged, located_bank[i], located_offset[i]);
  }
  const Memory& m = R.mem[g.memory];
  prefetch_pages(m, n, false);
  for (int64_t i = 0; i < n; ++i) {
    if (ragged && !((i % cols) < valid)) continue;
    const uint8_t* slot = slot_ptr(index, front_slot(index, cb_offset + i));
    move_bytes(memory_ptr(m, located_bank[i], located_offset[i], g.page_size, index, WRITE), slot, g.page_size);
    transfer(g, located_bank[i], located_offset[i], slot);
    if (moved == 0 || located_offset[i] < lo) lo = located_offset[i];
    if (moved == 0 || located_offset[i] + g.page_size > hi) hi = located_offset[i] + g.page_size;
    ++moved;
    if (located_bank[i] == bank) ++local;
  }
  if (moved) note_write(g.memory, 0, lo, hi);
  k[kernel].pending_writes |= 1u << index;
  if (ragged) {
    count_masked(g, moved, true);  // the written pages were compacted: locality is not tracked past a ragged edge
  } else {
    if (g.layout != INTERLEAVED) T.local_bytes += local * g.page_size;
    count_static(g, n, true);
  }
}

void Core::op_noc_write_rows(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  int64_t start = regs[f[3]], valid = regs[f[4]], index = f[5], count = std::max<int64_t>(f[7], 0);
  config(index);
  page_range(0, count);
  check_window(index, offs.data(), count, cb[index].waited, true);
  check_noc(g, index, 1);
  if (valid > 0) {  // the interpreter writes the cores with the same number of rows together, fewest first
    const Sharded* sh = resolve(g, index, 2);
    located_bank.resize(valid);
    located_offset.resize(valid);
    for (int64_t j = 0; j < valid; ++j)
      locate(g, sh, wrap_add(start, j), WRITE, index, 3, valid, false, located_bank[j], located_offset[j]);
    if (valid > count)
      internal("noc_write_rows of " + std::to_string(valid) + " rows from " + std::to_string(count) +
                   " waited pages",
               index);
    const Memory& m = R.mem[g.memory];
    prefetch_pages(m, valid, false);
    int64_t lo = 0, hi = 0;
    for (int64_t j = 0; j < valid; ++j) {
      const uint8_t* slot = slot_ptr(index, front_slot(index, j));
      move_bytes(memory_ptr(m, located_bank[j], located_offset[j], g.page_size, index, WRITE), slot, g.page_size);
      transfer(g, located_bank[j], located_offset[j], slot);
      if (j == 0 || located_offset[j] < lo) lo = located_offset[j];
      if (j == 0 || located_offset[j] + g.page_size > hi) hi = located_offset[j] + g.page_size;
    }
    note_write(g.memory, valid, lo, hi);
  }
  k[kernel].pending_writes |= 1u << index;
  count_masked(g, valid, true);
}

// Interpreter noc_write_rows with a segment: the first size bytes of each of the first `valid` waited pages ->
// bytes offset.. of buffer pages start.. (the cores with the same number of rows are one write range).
void Core::op_noc_write_row_segments(int kernel, const Instr& in) {
  const int64_t* f = in.f;
  const AddrGen& g = agens[f[2]];
  int64_t start = regs[f[3]], valid = regs[f[4]], index = f[5], count = std::max<int64_t>(f[7], 0);
  int64_t offset = regs[f[8]], size = regs[f[9]];
  config(index);
  page_range(0, count);
  check_window(index, offs.data(), count, cb[index].waited, true);
  check_format(g, index, 1);
  check_segment(g, index, offset, size, 2);
  if (valid > 0) {
    const Sharded* sh = resolve(g, index, 4);
    located_bank.resize(valid);
    located_offset.resize(valid);
    for (int64_t j = 0; j < valid; ++j)
      locate(g, sh, wrap_add(start, j), WRITE, index, 5, valid, false, located_bank[j], located_offset[j]);
    if (valid > count)
      internal("noc_write_rows of " + std::to_string(valid) + " rows from " + std::to_string(count) +
                   " waited pages",
               index);
    if (size > 0) {
      const Memory& m = R.mem[g.memory];
      int64_t lo = 0, hi = 0;
      for (int64_t j = 0; j < valid; ++j) {
        const uint8_t* slot = slot_ptr(index, front_slot(index, j));
        int64_t at = located_offset[j] + offset;
        move_bytes(memory_ptr(m, located_bank[j], at, size, index, WRITE), slot, size);
        transfer(g, located_bank[j], at, slot, size);
        if (j == 0 || at < lo) lo = at;
        if (j == 0 || at + size > hi) hi = at + size;
      }
      note_write(g.memory, valid, lo, hi);
    }
  }
  k[kernel].pending_writes |= 1u << index;
  count_masked(g, valid * size, true, 1);
}

// ------------------------------------------------------------------------------------------ compute

Format Core::front_pages(int64_t index, std::vector<const uint8_t*>& out) {
  Format fmt = tile_format(index);
  int64_t n = static_cast<int64_t>(offs.size());
  check_window(index, offs.data(), n, cb[index].waited, true);
  out.resize(n);
  for (int64_t i = 0; i < n; ++i) out[i] = slot_ptr(index, front_slot(index, offs[i]));
  return fmt;
}

void Core::unpack_pages(const std::vector<const uint8_t*>& in, Format fmt, std::vector<float>& out) {
  size_t n = in.size();
  if (out.size() < n * TILE_ELEMS) out.resize(n * TILE_ELEMS);  // grows only: resize would zero-fill
  for (size_t i = 0; i < n; ++i) {
    float* tile = out.data() + i * TILE_ELEMS;
    unpack_tile(in[i], fmt, tile);
    if (fmt == Format::F32 || fmt == Format::I32) dst_round_values(tile, TILE_ELEMS, E.dst);
  }
}

Format Core::unpack_front(int64_t index, std::vector<float>& out) {
  Format fmt = front_pages(index, pages_a);
  unpack_pages(pages_a, fmt, out);
  return fmt;
}

void Core::op_copy(const Instr& in, bool transpose) {
  const int64_t* f = in.f;
  int64_t n = f[6] * f[7];
  int64_t base = math_slots<false>(f[8], n);
  config(f[2]);
  tile_block(f[3], f[6], f[7], f[4], f[5]);
  Format fmt = unpack_front(f[2], tiles_a);
  for (int64_t i = 0; i < n; ++i) {
    float* src = tiles_a.data() + i * TILE_ELEMS;
    to_dst(src, fmt);
    float* out = dst_tile(base + i);
    if (transpose) {
      for (int r = 0; r < TILE; ++r)
        for (int c = 0; c < TILE; ++c) out[r * TILE + c] = src[c * TILE + r];
    } else {
      std::memcpy(out, src, TILE_ELEMS * 4);
    }
  }
  counters.charge(f[9]);
}

// The 32 waited row pages of a row-major CB -> Dst tiles (unpack-tilize; zero past a row).
void Core::op_tilize(const Instr& in) {
  const int64_t* f = in.f;
  int64_t index = f[2], cols = f[4];
  const CBConfig& c = config(index);
  int64_t base = math_slots<false>(f[5], cols);
  page_range(0, TILE);
  check_window(index, offs.data(), TILE, cb[index].waited, true);
  int64_t element;
  if (c.format == static_cast<int>(Format::BF16))
    element = 2;
  else if (c.format == static_cast<int>(Format::F32))
    element = 4;
  else
    fail(TILIZE_FORMAT, index, {c.format});
  int64_t width = c.page_size / element, first = f[3] * TILE;
  if (first < 0) internal("tilize_tiles at a negative column", index);
  int64_t count = std::max<int64_t>(0, std::min(cols * TILE, width - first));
  for (int64_t i = 0; i < TILE; ++i) {  // each tile's row i straight from the page (zero past the row)
    const uint8_t* row = slot_ptr(index, front_slot(index, i)) + first * element;
    for (int64_t col = 0; col < cols; ++col) {
      float* out = dst_tile(base + col) + i * TILE;
      int64_t n = std::max<int64_t>(0, std::min<int64_t>(TILE, count - col * TILE));
      if (n == TILE && element == 2) {  // a whole bf16 row (unpack_row_values' values, inline)
        uint16_t h[TILE];
        std::memcpy(h, row + col * TILE * element, sizeof h);
        for (int e = 0; e < TILE; ++e) out[e] = conv::bf16_value(h[e]);
      } else if (n) {
        unpack_row_values(row + col * TILE * element, static_cast<int>(n), static_cast<Format>(c.format), out);
      }
      if (n < TILE) std::fill(out + n, out + TILE, 0.0f);
    }
  }
  counters.charge(f[9]);
}

// Dst tiles (a row of them) -> element columns 32 * col_offset.. of the 32 reserved row pages (pack-untilize).
void Core::op_pack_rows(const Instr& in) {
  const int64_t* f = in.f;
  if (dst_state != WAITED) fail(PACK_ROWS_STATE, -1, {dst_state});
  int64_t index = f[2], cols = f[4];
  const CBConfig& c = config(index);
  int64_t base = dst_slots(f[5], cols);
  filled(base, cols);
  page_range(0, TILE);
  check_window(index, offs.data(), TILE, cb[index].reserved, false);
  bool bf16 = c.format == static_cast<int>(Format::BF16);
  int64_t element = bf16 ? 2 : 4, width = c.page_size / element, first = f[3] * TILE;
  if (first >= width) fail(PACK_ROWS_COLUMN, index, {first, width});
  if (!bf16 && c.format != static_cast<int>(Format::F32)) fail(UNTILIZE_FORMAT, index, {c.format});
  if (first < 0) internal("pack_rows at a negative column", index);
  int64_t count = std::min(cols * TILE, width - first);
  for (int64_t i = 0; i < TILE; ++i) {  // row i of each tile straight into the page
    uint8_t* row = slot_ptr(index, back_slot(index, i)) + first * element;
    for (int64_t col = 0; col * TILE < count; ++col)
      pack_row_values(dst_tile(base + col) + i * TILE, static_cast<int>(std::min<int64_t>(TILE, count - col * TILE)),
                      static_cast<Format>(c.format), row + col * TILE * element);
  }
}

void Core::op_binary(const Instr& in) {
  const int64_t* f = in.f;
  int64_t n = f[12] * f[13];
  int64_t base = math_slots<false>(f[14], n);
  config(f[3]);
  tile_block(f[4], f[12], f[13], f[5], f[6]);
  Format fa = front_pages(f[3], pages_a);
  config(f[7]);
  tile_block(f[8], f[12], f[13], f[9], f[10]);
  Format fb = front_pages(f[7], pages_b);
  if (fa == Format::BF16 && fb == Format::BF16 && E.dst == DstFormat::BF16) {  // bf16 pages read in place
    for (int64_t i = 0; i < n; ++i)
      eltwise_bf16_pages(pages_a[i], pages_b[i], static_cast<BinaryOp>(f[2]), static_cast<Bcast>(f[11]),
                         dst_tile(base + i));
    counters.charge(f[15]);
    return;
  }
  unpack_pages(pages_a, fa, tiles_a);
  unpack_pages(pages_b, fb, tiles_b);
  for (int64_t i = 0; i < n; ++i)
    eltwise_tile(tiles_a.data() + i * TILE_ELEMS, tiles_b.data() + i * TILE_ELEMS, static_cast<BinaryOp>(f[2]),
                 static_cast<Bcast>(f[11]), E.dst, dst_tile(base + i));
  counters.charge(f[15]);
}

void Core::op_matmul(const Instr& in) {
  const int64_t* f = in.f;
  int64_t inner = f[8], rows = f[9], cols = f[10];
  int64_t base;
  if (f[13]) {
    base = math_slots<true>(f[11], rows * cols);
  } else {  // onto zeros (the interpreter's matmul_tiles with accumulate = false): the slots are overwritten whole
    base = math_slots<false>(f[11], rows * cols);
    std::fill(dst_tile(base), dst_tile(base + rows * cols), 0.0f);
  }
  config(f[2]);
  tile_block(f[3], rows, inner, f[4], 1);
  Format fa = front_pages(f[2], pages_a);
  config(f[5]);
  tile_block(f[6], inner, cols, f[7], 1);
  Format fb = front_pages(f[5], pages_b);
  ptr_dst.resize(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) ptr_dst[i] = dst_tile(base + i);
  if (fa == Format::BF16 && fb == Format::BF16) {  // the matmul reads the CBs' bf16 pages in place
    half_a.resize(pages_a.size());
    half_b.resize(pages_b.size());
    for (size_t i = 0; i < pages_a.size(); ++i) half_a[i] = reinterpret_cast<const uint16_t*>(pages_a[i]);
    for (size_t i = 0; i < pages_b.size(); ++i) half_b[i] = reinterpret_cast<const uint16_t*>(pages_b[i]);
    matmul_block_bf16(ptr_dst.data(), half_a.data(), half_b.data(), static_cast<int>(rows), static_cast<int>(cols),
                      static_cast<int>(inner), static_cast<Fidelity>(f[12]), E.dst);
    counters.charge(f[14]);
    return;
  }
  unpack_pages(pages_a, fa, tiles_a);
  unpack_pages(pages_b, fb, tiles_b);
  ptr_a.resize(rows * inner);
  ptr_b.resize(inner * cols);
  for (int64_t i = 0; i < rows * inner; ++i) ptr_a[i] = tiles_a.data() + i * TILE_ELEMS;
  for (int64_t i = 0; i < inner * cols; ++i) ptr_b[i] = tiles_b.data() + i * TILE_ELEMS;
  // bf16 and block-float tiles unpack to bf16 values already; f16 ones are rounded to bf16 first
  bool bf16_operands = fa != Format::F16 && fb != Format::F16;
  matmul_block(ptr_dst.data(), ptr_a.data(), ptr_b.data(), static_cast<int>(rows), static_cast<int>(cols),
               static_cast<int>(inner), static_cast<Fidelity>(f[12]), E.dst, bf16_operands);
  counters.charge(f[14]);
}

void Core::op_reduce(const Instr& in) {
  const int64_t* f = in.f;
  int64_t slot = math_slots<true>(f[10], 1);
  config(f[4]);
  tile_block(f[5], f[8], f[9], f[6], f[7]);
  unpack_front(f[4], tiles_a);
  int64_t n = static_cast<int64_t>(offs.size());
  ptr_a.resize(n);
  for (int64_t i = 0; i < n; ++i) ptr_a[i] = tiles_a.data() + i * TILE_ELEMS;
  float scaler = static_cast<float>(E.fparams[f[11]]);
  if (f[2] == 0)
    reduce_sum_block(dst_tile(slot), ptr_a.data(), static_cast<int>(n), static_cast<ReduceDim>(f[3]), scaler,
                     static_cast<Fidelity>(f[12]), E.dst);
  else
    reduce_max_block(dst_tile(slot), ptr_a.data(), static_cast<int>(n), static_cast<ReduceDim>(f[3]), scaler, E.dst);
  counters.charge(f[13]);
}

void Core::op_sfpu(const Instr& in) {
  const int64_t* f = in.f;
  int64_t base = math_slots<true>(f[4], f[5]);
  int count = static_cast<int>(f[5] * TILE_ELEMS);
  if (f[2] == 0)
    sfpu_table_tile(dst_tile(base), count, E.tables.data() + f[3] * 65536, E.dst,
                    E.table_overflow.empty() ? nullptr : E.table_overflow.data() + f[3] * 65536);
  else
    sfpu_scalar_tile(dst_tile(base), count, static_cast<ScalarFn>(f[3]), static_cast<float>(E.fparams[f[6]]), E.dst);
  counters.charge(f[7]);
}

void Core::op_sfpu_binary(const Instr& in) {
  const int64_t* f = in.f;
  int64_t base = math_slots<true>(f[3], f[5]);
  int64_t operand = dst_slots(f[4], f[5]);
  filled(operand, f[5]);
  sfpu_binary_tile(dst_tile(base), dst_tile(operand), static_cast<int>(f[5] * TILE_ELEMS),
                   static_cast<SfpuBinaryFn>(f[2]), E.dst);
  counters.charge(f[6]);
}

void Core::op_fill(const Instr& in) {
  const int64_t* f = in.f;
  int64_t base = math_slots<false>(f[2], f[3]);
  float value = dst_round(static_cast<float>(E.fparams[f[4]]), E.dst);
  std::fill(dst_tile(base), dst_tile(base + f[3]), value);
  counters.charge(f[5]);
}

void Core::op_mask(const Instr& in) {
  const int64_t* f = in.f;
  int64_t rows = f[4], cols = f[5];
  int64_t base = math_slots<true>(f[6], rows * cols);
  int64_t row_tile = regs[f[2]], col_tile = regs[f[3]], valid_rows = f[7], valid_cols = f[8];
  float fill = dst_round(static_cast<float>(E.fparams[f[9]]), E.dst);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float* tile = dst_tile(base + r * cols + c);
      for (int64_t i = 0; i < TILE; ++i) {
        int64_t row = wrap_add(wrap_mul(wrap_add(row_tile, r), TILE), i);
        for (int64_t j = 0; j < TILE; ++j) {
          int64_t col = wrap_add(wrap_mul(wrap_add(col_tile, c), TILE), j);
          if (row >= valid_rows || col >= valid_cols) tile[i * TILE + j] = fill;
        }
      }
    }
  counters.charge(f[10]);
}

void Core::op_pack(const Instr& in) {
  const int64_t* f = in.f;
  if (dst_state != WAITED) fail(PACK_STATE, -1, {dst_state});
  int64_t index = f[4], count = f[3];
  config(index);
  int64_t base = dst_slots(f[2], count);
  filled(base, count);
  page_range(f[5], count);
  check_window(index, offs.data(), static_cast<int64_t>(offs.size()), cb[index].reserved, false);
  Format fmt = tile_format(index);
  for (int64_t i = 0; i < count; ++i) pack_tile(dst_tile(base + i), fmt, slot_ptr(index, back_slot(index, f[5] + i)));
}

// ------------------------------------------------------------------------------------------ threads

// A small persistent pool: starting threads for every program would cost more than a small program runs.
// Waking a sleeping thread takes tens of microseconds, as long as a small program runs: a worker that
// finished spins for a while (kSpinUs) before it sleeps, so that the programs of a model, which follow each
// other at the pace of the Python around them, find it awake; the caller spins for the workers' end alike.
class Pool {
 public:
  static Pool& get() {
    static Pool pool;
    return pool;
  }

  // Runs task(worker) for worker = 0..workers-1, worker 0 on the calling thread.
  void run(int workers, const std::function<void(int)>& task) {
    if (workers <= 1) {
      task(0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(threads_.size()) < workers - 1) {
        int id = static_cast<int>(threads_.size()) + 1;
        threads_.emplace_back([this, id] { loop(id); });
      }
      task_ = &task;
      active_ = workers;
      pending_.store(workers - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);  // under the mutex: a worker going to sleep sees it
    }
    wake_.notify_all();
    task(0);
    if (!spin([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = nullptr;
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  static constexpr double kSpinUs = 300;

  // Polls done() for up to kSpinUs; whether it became true.
  template <typename Done>
  static bool spin(Done done) {
    return spin_for(done, kSpinUs);
  }

  void loop(int id) {
    int64_t seen = 0;
    for (;;) {
      spin([&] { return stopping_.load(std::memory_order_relaxed) ||
                        generation_.load(std::memory_order_acquire) != seen; });
      const std::function<void(int)>* task;
      {
        std::unique_lock<std::mutex> lock(mutex_);  // the generation, task and count are read together
        wake_.wait(lock, [&] { return stopping_.load() || generation_.load() != seen; });
        if (stopping_.load()) return;
        seen = generation_.load();
        if (id >= active_) continue;
        task = task_;
      }
      (*task)(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be asleep in done_.wait
        done_.notify_one();
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* task_ = nullptr;
  int active_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<int64_t> generation_{0};
  std::atomic<bool> stopping_{false};
};

// Thread time (a run's duration times its threads) under which a program runs on one thread.
constexpr double kParallelUs = 30;
// Runs of a program on one thread after a run on several that mostly waited (Encoded::serial_runs), and how
// often a program that may run on several threads tries the way it found slower (Encoded::serial_us).
constexpr int kSerialRuns = 16;
constexpr int kProbeEvery = 16;  // (Encoded::probe_every's start)
constexpr int kProbeMost = 64;

// ------------------------------------------------------------------------------------------ Python API

template <typename T>
std::vector<T> to_vector(const py::handle& h) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(h);
  if (!a) throw std::invalid_argument("expected a numeric array");
  return std::vector<T>(a.data(), a.data() + a.size());
}

Memory memory_view(int id, py::array data, py::tuple table, py::list sharded, py::handle watch, py::handle marks) {
  Memory m;
  m.id = id;
  if (data.ndim() != 2 || !py::isinstance<py::array_t<uint8_t>>(data) || data.strides(1) != 1 ||
      data.strides(0) < data.shape(1) || !data.writeable())
    throw std::invalid_argument("a memory must be a writable uint8 array [banks, capacity] of contiguous banks");
  m.data = static_cast<uint8_t*>(data.mutable_data());
  m.banks = data.shape(0);
  m.capacity = data.shape(1);
  m.stride = data.strides(0);
  if (m.banks > 1 && m.banks <= 0xFFFFFFFF) m.bank_magic = ~uint64_t{0} / static_cast<uint64_t>(m.banks) + 1;
  m.starts = to_vector<int64_t>(table[0]);
  m.ends = to_vector<int64_t>(table[1]);
  m.sizes = to_vector<int64_t>(table[2]);
  m.counts = to_vector<int64_t>(table[3]);
  for (py::handle item : sharded) {
    auto t = item.cast<py::tuple>();
    Sharded s;
    s.address = t[0].cast<int64_t>();
    s.page_size = t[1].cast<int64_t>();
    s.num_pages = t[2].cast<int64_t>();
    s.cols = t[3].cast<int64_t>();
    s.shard_rows = t[4].cast<int64_t>();
    s.shard_cols = t[5].cast<int64_t>();
    s.per_row = t[6].cast<int64_t>();
    s.layout = t[7].cast<int>();
    s.banks = to_vector<int64_t>(t[8]);
    m.sharded.push_back(std::move(s));
  }
  m.watch = to_vector<int64_t>(watch);
  if (!marks.is_none()) {
    auto a = py::array::ensure(marks);
    if (!a || a.ndim() != 2 || !py::isinstance<py::array_t<uint8_t>>(a) || !(a.flags() & py::array::c_style) ||
        !a.writeable() || a.shape(0) != m.banks || a.shape(1) * POISON_BLOCK > m.capacity)
      throw std::invalid_argument("poison marks must be a writable C-contiguous uint8 array [banks, blocks]");
    m.marks = static_cast<uint8_t*>(a.mutable_data());
    m.blocks = a.shape(1);
  }
  return m;
}

std::shared_ptr<Encoded> make_encoded(py::array_t<int64_t> code, std::vector<int64_t> kernel_start, int64_t n_regs,
                                      int64_t n_agens, py::array_t<int64_t> cbs, py::list args,
                                      std::vector<int64_t> banks, int dst_format, std::vector<double> fparams,
                                      py::array_t<float> tables, py::array_t<uint8_t> table_overflow) {
  auto e = std::make_shared<Encoded>();
  if (code.ndim() != 2 || code.shape(1) != W) throw std::invalid_argument("code must be int64 [n, 16]");
  e->code.resize(code.shape(0));
  auto c = code.unchecked<2>();
  for (py::ssize_t i = 0; i < code.shape(0); ++i)
    for (int j = 0; j < W; ++j) e->code[i].f[j] = c(i, j);
  for (int i = 0; i < KERNELS; ++i) e->kernel_start[i] = kernel_start.at(i);
  e->n_regs = n_regs;
  e->n_agens = n_agens;
  auto cb = cbs.unchecked<2>();
  for (py::ssize_t i = 0; i < cbs.shape(0); ++i) {
    int64_t index = cb(i, 0);
    if (index < 0 || index >= NUM_CBS) throw std::invalid_argument("CB index outside 0..31");
    CBConfig& config = e->cbs[index];
    config.configured = true;
    config.address = cb(i, 1);
    config.page_size = cb(i, 2);
    config.pages = cb(i, 3);
    config.format = static_cast<int>(cb(i, 4));
    e->cb_order.push_back(static_cast<int>(index));
  }
  std::sort(e->cb_order.begin(), e->cb_order.end());
  e->cores = static_cast<int64_t>(banks.size());
  for (int i = 0; i < KERNELS; ++i) {
    auto per_kernel = args[i].cast<py::tuple>();
    e->arg_offsets[i] = to_vector<int64_t>(per_kernel[0]);
    e->arg_values[i] = to_vector<int64_t>(per_kernel[1]);
    if (static_cast<int64_t>(e->arg_offsets[i].size()) != e->cores + 1)
      throw std::invalid_argument("runtime argument offsets need cores + 1 entries");
  }
  e->banks = std::move(banks);
  for (const Instr& in : e->code)
    if (in.f[0] == SEM_SET || in.f[0] == SEM_WAIT || in.f[0] == SEM_INC || in.f[0] == NOC_MCAST) e->lockstep = true;
  e->dst = static_cast<DstFormat>(dst_format);
  e->fparams = std::move(fparams);
  e->tables.assign(tables.data(), tables.data() + tables.size());
  if (e->dst == DstFormat::F16) {
    if (table_overflow.size() != tables.size())
      throw std::invalid_argument("an f16 program needs the overflow marks of its SFPU tables");
    e->table_overflow.assign(table_overflow.data(), table_overflow.data() + table_overflow.size());
  }
  return e;
}

// What a run gives back besides the memory: the fault the lockstep interpreter meets first (with its cores) or
// the counts, the watched ranges its writes met, and (check_races) the races found.
struct Totals {
  int64_t tiles[NUM_COUNT_KEYS] = {};
  int64_t noc = 0, dram = 0, written = 0, local = 0, link = 0, fanout = 1;
  bool operator==(const Totals& o) const {
    return std::memcmp(tiles, o.tiles, sizeof tiles) == 0 && noc == o.noc && dram == o.dram && written == o.written &&
           local == o.local && link == o.link && fanout == o.fanout;
  }
};

struct Outcome {
  py::object fault = py::none();
  py::tuple dirty{2};
  bool any_dirty = false;
  py::list races;
  Totals totals;

  // run_program's result: (fault, counts, dirty watch flags, races)
  py::tuple to_python() const {
    if (!fault.is_none()) return py::make_tuple(fault, py::none(), dirty, races);
    py::tuple tiles(NUM_COUNT_KEYS);
    for (int i = 0; i < NUM_COUNT_KEYS; ++i) tiles[i] = totals.tiles[i];
    py::tuple counts = py::make_tuple(tiles, totals.noc, totals.dram, totals.written, totals.local, totals.link,
                                      totals.fanout);
    return py::make_tuple(py::none(), counts, dirty, races);
  }
};

Totals totals_of(const py::tuple& counts) {
  Totals t;
  auto tiles = counts[0].cast<py::tuple>();
  if (tiles.size() != NUM_COUNT_KEYS) throw std::invalid_argument("counts need one tile count per count key");
  for (int i = 0; i < NUM_COUNT_KEYS; ++i) t.tiles[i] = tiles[i].cast<int64_t>();
  t.noc = counts[1].cast<int64_t>();
  t.dram = counts[2].cast<int64_t>();
  t.written = counts[3].cast<int64_t>();
  t.local = counts[4].cast<int64_t>();
  t.link = counts[5].cast<int64_t>();
  t.fanout = counts[6].cast<int64_t>();
  return t;
}

// Runs E on the memories of R (set up by the caller: run_program, or a RunPlan step).
Outcome execute(Encoded& E, Run& R, int threads, bool check_races) {
  Outcome out;
  R.check_races = check_races;
  for (int64_t b : E.banks)
    if (b < 0 || b >= R.mem[1].banks) throw std::invalid_argument("a program core outside the device's L1 banks");
  for (const CBConfig& c : E.cbs)
    if (c.configured && (c.address < 0 || c.address + c.page_size * c.pages > R.mem[1].capacity))
      throw std::invalid_argument("a CB outside L1");
  R.faults.resize(E.cores);
  R.counters.resize(E.cores);
  // A short program runs on one thread (handing it over costs more than it saves): one whose last run took
  // under kParallelUs of thread time. The result is the same for any number of threads.
  int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, E.cores)));
  if (E.last_run_us > 0 && E.last_run_us * E.last_workers < kParallelUs) workers = 1;
  const bool choice = workers > 1;  // one thread or several (Encoded::serial_us)
  if (choice) {
    const bool probe = ++E.runs == E.next_probe;  // the other way (Encoded::next_probe)
    const bool serial_faster = E.serial_us > 0 && E.parallel_us > 0 && 1.25 * E.serial_us < E.parallel_us;
    if (probe) {
      E.next_probe = E.runs + E.probe_every;
      E.probe_every = std::min(2 * E.probe_every, kProbeMost);
    } else {
      const int now = serial_faster ? 1 : 2;
      if (E.chosen != 0 && now != E.chosen) {  // the choice flipped: probe often again
        E.probe_every = kProbeEvery;
        E.next_probe = E.runs + kProbeEvery;
      }
      E.chosen = now;
    }
    if (E.serial_runs > 0) {
      --E.serial_runs;
      workers = 1;
    } else if (serial_faster != probe) {
      workers = 1;
    }
  }
  if (E.lockstep) {
    R.semaphores.assign(E.cores * NUM_SEMAPHORES, 0);
    R.unlanded.assign(E.cores * NUM_CBS, 0);
  }
  std::vector<ThreadAcc> acc(E.lockstep && workers > 1 ? E.cores : workers);  // Lockstep: one per core
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto t0 = std::chrono::steady_clock::now();
  double waited_us = 0;  // the caller's thread waiting for the others
  {
    py::gil_scoped_release release;
    std::optional<Lockstep> lockstep;
    if (E.lockstep) lockstep.emplace(R, acc, workers);
    std::chrono::steady_clock::time_point own_end;  // when the caller's thread finished its part
    std::function<void(int)> task = [&](int worker) {
      try {
        if (lockstep) {
          lockstep->work(worker);
        } else {
          Core core(R, acc[worker]);
          for (int64_t c; (c = next.fetch_add(1)) < E.cores;) core.run(c);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      if (worker == 0) own_end = std::chrono::steady_clock::now();
    };
    Pool::get().run(workers, task);
    if (workers > 1)
      waited_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - own_end).count() +
                  (lockstep ? lockstep->waited_us() : 0);
  }
  E.last_run_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  E.last_workers = workers;
  // a run whose caller's thread waited for the others a quarter of the time or more (for their last cores, for
  // a late thread to start and end, or in a lockstep program for the cores they claimed): the next kSerialRuns
  // runs take one thread, then several are tried again
  if (workers > 1 && waited_us >= 0.25 * E.last_run_us) E.serial_runs = kSerialRuns;
  // (a program's first run is cold, its time not its own: the encoding's first use, first touches, waking threads)
  if (choice && E.runs > 1) (workers > 1 ? E.parallel_us : E.serial_us) = E.last_run_us;
  if (error) std::rethrow_exception(error);

  // the combined write range of each write call, against the watched ranges
  py::tuple& dirty = out.dirty;
  {
    std::map<std::tuple<int, int64_t, int64_t>, std::pair<int64_t, int64_t>> writes;
    for (const ThreadAcc& a : acc)
      for (const auto& [key, range] : a.writes) {
        auto [it, added] = writes.try_emplace({key.memory, key.step, key.group}, range);
        if (!added) {
          it->second.first = std::min(it->second.first, range.first);
          it->second.second = std::max(it->second.second, range.second);
        }
      }
    for (int m = 0; m < 2; ++m) {  // None: no watched range was written
      const std::vector<int64_t>& w = R.mem[m].watch;
      std::vector<uint8_t> h(w.size() / 2, 0);
      bool any = false;
      for (const auto& [key, range] : writes) {
        if (std::get<0>(key) != m) continue;
        for (size_t i = 0; i < w.size() / 2; ++i)
          if (range.first < w[2 * i + 1] && w[2 * i] < range.second) h[i] = 1, any = true;
      }
      if (any) {
        py::array_t<bool> hit(static_cast<py::ssize_t>(h.size()));
        std::copy(h.begin(), h.end(), hit.mutable_data());
        dirty[m] = hit;
        out.any_dirty = true;
      } else {
        dirty[m] = py::none();
      }
    }
  }

  // with check_races: transfers of different cores to overlapping bytes, at least one of them a write (the
  // interpreter runs cores op by op, so such a program's result could depend on the order of the cores)
  py::list& races = out.races;
  if (check_races) {
    std::vector<ThreadAcc::Transfer> all;
    for (const ThreadAcc& a : acc) all.insert(all.end(), a.transfers.begin(), a.transfers.end());
    std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) {
      return std::tie(x.memory, x.bank, x.lo) < std::tie(y.memory, y.bank, y.lo);
    });
    for (size_t i = 0; i < all.size() && races.size() < 8; ++i)
      for (size_t j = i + 1; j < all.size() && all[j].memory == all[i].memory && all[j].bank == all[i].bank &&
                             all[j].lo < all[i].hi && races.size() < 8;
           ++j)
        if (all[j].core != all[i].core && (all[i].write || all[j].write) &&
            !(all[i].write && all[j].write && all[i].lo == all[j].lo && all[i].hi == all[j].hi &&
              all[i].hash == all[j].hash))
          races.append(py::make_tuple(all[i].memory, all[i].bank, all[i].lo, all[i].core, all[i].write, all[j].core,
                                      all[j].write));
  }

  // the fault the lockstep interpreter meets first, and the cores that fault there
  const Fault* first = nullptr;
  int64_t first_core = -1;
  for (int64_t c = 0; c < E.cores; ++c) {
    const auto& f = R.faults[c];
    if (!f) continue;
    if (!first || std::tie(f->position, f->stage, f->group) < std::tie(first->position, first->stage, first->group)) {
      first = &*f;
      first_core = c;
    }
  }
  if (first) {
    py::array_t<bool> mask(E.cores);
    bool* m = mask.mutable_data();
    for (int64_t c = 0; c < E.cores; ++c) {
      const auto& f = R.faults[c];
      m[c] = first->all_cores ||
             (f && std::tie(f->position, f->stage, f->group) == std::tie(first->position, first->stage, first->group));
    }
    py::tuple params(NUM_PARAMS);
    for (int i = 0; i < NUM_PARAMS; ++i) params[i] = first->params[i];
    out.fault = py::make_tuple(first->kind, first->kernel, first->op, first->cb, params, mask, first->text,
                               first_core);
    return out;
  }

  const Counters& c0 = R.counters[0];
  int64_t noc = c0.noc_bytes, dram_all = c0.dram_bytes * E.cores, written = c0.dram_written * E.cores, local = 0;
  std::vector<int64_t> sums;
  std::vector<std::pair<int64_t, int>> meta;
  for (const ThreadAcc& a : acc) {
    local += a.local_bytes;
    if (a.masked_sum.size() > sums.size()) {
      sums.resize(a.masked_sum.size(), 0);
      meta.resize(a.masked_sum.size());
    }
    for (size_t i = 0; i < a.masked_sum.size(); ++i) {
      sums[i] += a.masked_sum[i];
      meta[i] = a.masked_meta[i];
    }
  }
  for (size_t i = 0; i < sums.size(); ++i) {  // NoC pages per core = sum over cores // cores, per transfer
    noc += floordiv(sums[i], E.cores) * meta[i].first;
    if (meta[i].second & 1) dram_all += sums[i] * meta[i].first;  // DRAM: the bytes of all cores
    if (meta[i].second == 3) written += sums[i] * meta[i].first;
  }
  Totals& t = out.totals;
  std::copy(c0.tiles, c0.tiles + NUM_COUNT_KEYS, t.tiles);
  for (const Counters& c : R.counters) t.link = std::max(t.link, c.mcast_sent), t.fanout = std::max(t.fanout, c.mcast_fanout);
  t.noc = noc, t.dram = dram_all, t.written = written, t.local = local;
  return out;
}

py::tuple run_program(Encoded& E, std::vector<int64_t> addresses, py::array dram, py::array l1, py::tuple dram_table,
                      py::tuple l1_table, py::list dram_sharded, py::list l1_sharded, py::handle dram_watch,
                      py::handle l1_watch, py::handle dram_marks, py::handle l1_marks, int64_t budget, int threads,
                      bool check_races) {
  Run R(E);
  R.mem[0] = memory_view(0, dram, dram_table, dram_sharded, dram_watch, dram_marks);
  R.mem[1] = memory_view(1, l1, l1_table, l1_sharded, l1_watch, l1_marks);
  R.addresses = std::move(addresses);
  R.budget = budget;
  return execute(E, R, threads, check_races).to_python();
}

// ------------------------------------------------------------------------------------------ run plans

// A memory's bytes and marks (memory_view without the tables: a run plan's steps keep theirs)
void attach(Memory& m, int id, const py::array& data, const py::handle& marks) {
  py::array_t<int64_t> none(0);
  Memory bare = memory_view(id, data, py::make_tuple(none, none, none, none), py::list(), none, marks);
  m.id = id, m.data = bare.data, m.banks = bare.banks, m.capacity = bare.capacity, m.stride = bare.stride;
  m.bank_magic = bare.bank_magic, m.marks = bare.marks, m.blocks = bare.blocks;
}


// A recorded stretch of a model run's host schedule (runtime/executor.py: the fresh buffers' poison and the
// programs, in schedule order), replayed in one call. A program step keeps what run_program would be passed
// for it (its memories' buffer tables, shard maps and watched ranges: the same for the same live buffers) and
// the counts of its recorded run; the memories' bytes and marks come with each replay.
class RunPlan {
 public:
  void add_poison(int memory, int64_t start, int64_t end) {
    if (memory < 0 || memory > 1) throw std::invalid_argument("memory 0 (DRAM) or 1 (L1)");
    Step s;
    s.memory = memory;
    s.start = start;
    s.end = end;
    steps_.push_back(std::move(s));
  }
  void add_program(std::shared_ptr<Encoded> program, std::vector<int64_t> addresses, py::array dram, py::array l1,
                   py::tuple dram_table, py::tuple l1_table, py::list dram_sharded, py::list l1_sharded,
                   py::handle dram_watch, py::handle l1_watch, py::tuple counts) {
    Step s;
    s.program = std::move(program);
    s.addresses = std::move(addresses);
    s.mem[0] = memory_view(0, dram, dram_table, dram_sharded, dram_watch, py::none());
    s.mem[1] = memory_view(1, l1, l1_table, l1_sharded, l1_watch, py::none());
    s.expected = totals_of(counts);
    steps_.push_back(std::move(s));
  }
  size_t size() const { return steps_.size(); }

  // The steps from `first` on; stops after a program whose run differs from its recording (a fault, writes into
  // a watched range, other counts). Returns (the index of that step, or the step count; its run_program result
  // or None; whether DRAM and L1 may hold poison marks afterwards).
  py::tuple run(py::array dram, py::array l1, py::array dram_marks, py::array l1_marks, bool dram_marked,
                bool l1_marked, size_t first, int64_t budget, int threads) {
    const py::array data[2] = {dram, l1}, marks[2] = {dram_marks, l1_marks};
    bool marked[2] = {dram_marked, l1_marked};
    Memory bare[2][2];  // [marked][memory]: the bytes and marks of each memory, checked once per replay
    for (int m = 0; m < 2; ++m) {
      attach(bare[0][m], m, data[m], py::none());
      attach(bare[1][m], m, data[m], marks[m]);
    }
    for (size_t i = first; i < steps_.size(); ++i) {
      Step& s = steps_[i];
      if (!s.program) {
        if (poison_range(data[s.memory], marks[s.memory], s.start, s.end)) marked[s.memory] = true;
        continue;
      }
      Run R(*s.program);
      for (int m = 0; m < 2; ++m) {
        const Memory& b = bare[marked[m]][m];
        Memory& to = R.mem[m];
        to.id = m, to.data = b.data, to.banks = b.banks, to.capacity = b.capacity, to.stride = b.stride;
        to.bank_magic = b.bank_magic, to.marks = b.marks, to.blocks = b.blocks;
        lend(to, s.mem[m]);
      }
      struct GiveBack {  // the tables go back to the step whatever happens
        Run& R;
        Step& s;
        ~GiveBack() {
          for (int m = 0; m < 2; ++m) lend(R.mem[m], s.mem[m]);
        }
      } give_back{R, s};
      R.addresses = s.addresses;
      R.budget = budget;
      Outcome out = execute(*s.program, R, threads, false);
      if (!out.fault.is_none() || out.any_dirty || !(out.totals == s.expected))
        return py::make_tuple(i, out.to_python(), py::make_tuple(marked[0], marked[1]));
      // a Ctrl-C stops the replay between programs, as it stops a run between them op by op (the Python side
      // still holds the stretch's start state, which the run's clean-up frees)
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return py::make_tuple(steps_.size(), py::none(), py::make_tuple(marked[0], marked[1]));
  }

 private:
  struct Step {
    int memory = 0;
    int64_t start = 0, end = 0;  // a poison step (no program)
    std::shared_ptr<Encoded> program;
    std::vector<int64_t> addresses;
    Memory mem[2];  // the buffer tables, shard maps and watched ranges (lent to each run of the step)
    Totals expected;
  };
  static void lend(Memory& a, Memory& b) {
    a.starts.swap(b.starts), a.ends.swap(b.ends), a.sizes.swap(b.sizes), a.counts.swap(b.counts);
    a.sharded.swap(b.sharded), a.watch.swap(b.watch);
  }
  std::vector<Step> steps_;
};

py::list names_of(const char* const* names, int n) {
  py::list out;
  for (int i = 0; i < n; ++i) out.append(names[i]);
  return out;
}

#define TTC_NAME_ITEM(name) #name,
const char* const OPCODE_NAMES[] = {TTC_PROGRAM_OPCODES(TTC_NAME_ITEM)};
const char* const FAULT_NAMES[] = {TTC_FAULT_KINDS(TTC_NAME_ITEM)};
#undef TTC_NAME_ITEM

}  // namespace

}  // namespace ttc::program

namespace ttc {

void register_program(py::module_& m) {
  using namespace program;
  py::class_<Encoded, std::shared_ptr<Encoded>>(m, "EncodedProgram",
                                                "A program's op stream (runtime/native_program.py encodes it)")
      .def(py::init(&make_encoded), py::arg("code"), py::arg("kernel_start"), py::arg("n_regs"), py::arg("n_agens"),
           py::arg("cbs"), py::arg("args"), py::arg("banks"), py::arg("dst_format"), py::arg("fparams"),
           py::arg("tables"), py::arg("table_overflow") = py::array_t<uint8_t>())
      .def_readonly("cores", &Encoded::cores)
      .def_readonly("lockstep", &Encoded::lockstep, "whether the program's cores run in lockstep (semaphores, multicast)")
      .def(
          "set_arg_values",
          [](Encoded& e, int kernel, std::vector<int64_t> values) {
            if (kernel < 0 || kernel >= KERNELS) throw std::invalid_argument("kernel index outside 0..2");
            if (values.size() != e.arg_values[kernel].size())
              throw std::invalid_argument("a kernel's runtime arguments keep their count");
            e.arg_values[kernel] = std::move(values);
          },
          "Replace one kernel's runtime argument values (the same count; runtime scalars substituted per run)",
          py::arg("kernel"), py::arg("values"))
      .def_readwrite("last_run_us", &Encoded::last_run_us)
      .def_readonly("last_workers", &Encoded::last_workers, "the threads the last run took")
      // the choice between one thread and several (Encoded::serial_us), read and set by tests
      .def_readwrite("serial_us", &Encoded::serial_us)
      .def_readwrite("parallel_us", &Encoded::parallel_us)
      .def_readwrite("runs", &Encoded::runs)
      .def_readwrite("next_probe", &Encoded::next_probe)
      .def_readwrite("probe_every", &Encoded::probe_every)
      .def_readwrite("chosen", &Encoded::chosen)
      .def_readwrite("serial_runs", &Encoded::serial_runs);
  m.def("run_program", &run_program,
        "Run an encoded program on every core of its grid; returns (fault, counts, dirty watch flags, races)",
        py::arg("program"), py::arg("addresses"), py::arg("dram"), py::arg("l1"), py::arg("dram_table"),
        py::arg("l1_table"), py::arg("dram_sharded"), py::arg("l1_sharded"), py::arg("dram_watch"),
        py::arg("l1_watch"), py::arg("dram_marks"), py::arg("l1_marks"), py::arg("step_budget"), py::arg("threads"), py::arg("check_races") = false);
  py::class_<RunPlan>(m, "RunPlan", "A recorded stretch of a run's host schedule, replayed in one call")
      .def(py::init<>())
      .def("add_poison", &RunPlan::add_poison, py::arg("memory"), py::arg("start"), py::arg("end"))
      .def("add_program", &RunPlan::add_program, py::arg("program"), py::arg("addresses"), py::arg("dram"),
           py::arg("l1"), py::arg("dram_table"), py::arg("l1_table"), py::arg("dram_sharded"), py::arg("l1_sharded"),
           py::arg("dram_watch"), py::arg("l1_watch"), py::arg("counts"))
      .def("__len__", &RunPlan::size)
      .def("run", &RunPlan::run, py::arg("dram"), py::arg("l1"), py::arg("dram_marks"), py::arg("l1_marks"),
           py::arg("dram_marked"), py::arg("l1_marked"), py::arg("first"), py::arg("step_budget"), py::arg("threads"));
  m.attr("PROGRAM_OPCODES") = names_of(OPCODE_NAMES, NUM_OPCODES);
  m.attr("PROGRAM_FAULTS") = names_of(FAULT_NAMES, NUM_FAULT_KINDS);
  m.attr("PROGRAM_WIDTH") = W;
  m.attr("PROGRAM_COUNT_KEYS") = NUM_COUNT_KEYS;
}

}  // namespace ttc
