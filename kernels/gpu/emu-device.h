/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The emulated device layer of kernels/gpu/emu-device.cc (tests only).
 */
#ifndef RESIDENT_KERNELS_GPU_EMU_DEVICE_H
#define RESIDENT_KERNELS_GPU_EMU_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

/* kernel launches so far */
extern int emu_device_launches;

/* frees what the fake device kept (poisoned memory, function handles) and
 * stops the emulation's worker threads; call once at exit */
void emu_device_shutdown(void);

#ifdef __cplusplus
}
#endif

#endif
