/* squeezeedge instruction counter: a qemu-user TCG plugin (plugin API version 1, QEMU 7.2 and later).
 *
 * Counts the guest instructions a process executes on the emulated core, exactly and repeatably:
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./count_insns.so -d plugin -D count.log PROGRAM ...
 * count.log gets "total N" at exit and, for each marker the program makes, "mark TAG N" (N: the
 * instructions executed so far). A marker is the system call MARK_SYSCALL with TAG as its first
 * argument: no kernel has that number (qemu answers ENOSYS), so the program runs unchanged, and the
 * instructions between two markers are one inference's, whatever the process did to start.
 *
 * The counter is added inline at the start of each translated block, without atomics: count a
 * process that runs its work on one thread.
 *
 * Declared here rather than included: Debian ships qemu-user without qemu-plugin.h, and these few
 * declarations are the stable version-1 API. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

#define MARK_SYSCALL 0x5345 /* "SE" */

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*atexit_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                             uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, atexit_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t insns;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id, (void)vcpu, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
  if (num != MARK_SYSCALL) return;
  char line[64];
  snprintf(line, sizeof line, "mark %" PRIu64 " %" PRIu64 "\n", a1, insns);
  qemu_plugin_outs(line);
}

static void on_exit(qemu_plugin_id_t id, void *userdata) {
  (void)id, (void)userdata;
  char line[48];
  snprintf(line, sizeof line, "total %" PRIu64 "\n", insns);
  qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv) {
  (void)info, (void)argc, (void)argv;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, on_exit, NULL);
  return 0;
}
