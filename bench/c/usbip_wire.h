/* USB/IP wire constants and big-endian helpers shared by the benchmark's C programs.
 *
 * Layouts: /work/shared/reference/usbip-protocol.md (op_common 8 bytes, usbip_usb_device 312
 * bytes, URB header 48 bytes; every integer big-endian, the SETUP packet verbatim).
 */
#ifndef USBIP_WIRE_H
#define USBIP_WIRE_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#define USBIP_VERSION 0x0111
#define OP_REQ_IMPORT 0x8003
#define OP_REP_IMPORT 0x0003
#define OP_REQ_DEVLIST 0x8005
#define OP_REP_DEVLIST 0x0005

#define CMD_SUBMIT 1
#define CMD_UNLINK 2
#define RET_SUBMIT 3
#define RET_UNLINK 4

#define DIR_OUT 0
#define DIR_IN 1

#define OP_COMMON_LEN 8
#define BUSID_LEN 32
#define USB_DEVICE_LEN 312
#define URB_HEADER_LEN 48

static inline uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint16_t get_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
