// The native program executor: one `ttmetal.enqueue_program` run from an op stream that
// runtime/native_program.py encodes once per program (see program.cpp for the semantics, which are those of
// runtime/interpreter.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "numerics.h"

namespace ttc::program {

// Every instruction is W int64 fields: f[0] the opcode, f[1] the op's id (its index in the encoder's list
// of operations, for fault messages), then the opcode's own fields (listed in program.cpp). Registers are
// per core: index values (int64) and address generators.
constexpr int W = 16;

#define TTC_PROGRAM_OPCODES(X)                                                                              \
  X(END) X(GET_ARG) X(CONSTANT) X(BUFFER_ADDRESS) X(ADDI) X(MULI) X(MINI) X(FOR_BEGIN) X(FOR_END)           \
  X(CB_RESERVE_BACK) X(CB_PUSH_BACK) X(CB_WAIT_FRONT) X(CB_POP_FRONT) X(ADDRGEN) X(NOC_READ_TILES)           \
  X(NOC_READ_PAGES) X(NOC_READ_TILES_INDEXED) X(NOC_READ_ROWS_INDEXED) X(NOC_WRITE_TILES) X(NOC_WRITE_ROWS) \
  X(NOC_READ_BARRIER) X(NOC_WRITE_BARRIER) X(TILE_REGS_ACQUIRE) X(TILE_REGS_COMMIT) X(TILE_REGS_WAIT)        \
  X(TILE_REGS_RELEASE) X(COPY_TILES) X(TRANSPOSE_TILES) X(TILIZE_TILES) X(PACK_ROWS) X(BINARY_TILES)         \
  X(MATMUL_TILES) X(REDUCE_TILES) X(SFPU_TILES) X(SFPU_BINARY_TILES) X(FILL_TILES) X(MASK_TILES)            \
  X(PACK_TILES) X(RAISE) X(SEM_SET) X(SEM_WAIT) X(SEM_INC) X(NOC_MCAST)

#define TTC_ENUM_ITEM(name) name,
enum Opcode : int64_t { TTC_PROGRAM_OPCODES(TTC_ENUM_ITEM) NUM_OPCODES };

// What went wrong; runtime/native_program.py turns a kind and its parameters into the interpreter's text.
#define TTC_FAULT_KINDS(X)                                                                                   \
  X(ARG_MISSING) X(BUFFER_OPERAND) X(CB_NOT_CONFIGURED) X(RESERVE_TOO_MANY) X(PUSH_TOO_MANY)                  \
  X(PUSH_PENDING_READS) X(WAIT_TOO_MANY) X(POP_TOO_MANY) X(POP_PENDING_WRITES) X(WINDOW) X(NOC_FORMAT)        \
  X(NOC_PAGE_SIZE) X(LAYOUT_MISMATCH) X(OUT_OF_BOUNDS) X(OUT_OF_BOUNDS_SHARDED) X(INDICES_OUTSIDE)             \
  X(INDEX_POSITION) X(NO_FORMAT) X(TILE_PAGE) X(TILIZE_FORMAT) X(UNTILIZE_FORMAT) X(PACK_ROWS_COLUMN)         \
  X(PACK_ROWS_STATE) X(PACK_STATE) X(MATH_STATE) X(DST_SLOTS) X(DST_PROTOCOL) X(RUNAWAY) X(RAISED)            \
  X(END_PENDING_WRITES) X(END_DST) X(DEADLOCK) X(DRAINED) X(INTERNAL) X(F16_OVERFLOW)   \
  X(MCAST_RECT) X(MCAST_PENDING_READS) X(SEM_TARGET) X(SEGMENT_OUTSIDE) X(SEGMENT_CB) X(PUSH_UNLANDED)

enum FaultKind : int { TTC_FAULT_KINDS(TTC_ENUM_ITEM) NUM_FAULT_KINDS };
#undef TTC_ENUM_ITEM

constexpr int NUM_PARAMS = 24;
constexpr int NUM_SEMAPHORES = 4;  // ttkernel.NUM_SEMAPHORES

// One fault of one core. Cores fault in the same scheduler order (their control flow is static), so
// (position, stage, group) orders the faults of all cores as the lockstep interpreter meets them:
// position = 4 x the step count of the faulting op (+1 at a kernel's end; program-level faults last),
// stage = the order of the check inside the op's handler, group = the per-core value that orders the
// interpreter's passes over groups of cores (noc_write_rows writes cores with fewer rows first).
struct Fault {
  int64_t position = 0;
  int64_t stage = 0;
  int64_t group = 0;
  int kind = INTERNAL;
  int kernel = -1;     // -1: none named
  int64_t op = -1;     // op id, -1: none named
  int64_t cb = -1;     // -1: none named
  bool all_cores = false;  // the interpreter reports it on every core (its check saw one merged row)
  int64_t params[NUM_PARAMS] = {};
  std::string text;    // INTERNAL only
};

}  // namespace ttc::program
