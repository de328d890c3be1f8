/*
 * berth_sha256: SHA-256 whose state can be saved and resumed, over OpenSSL's SHA256_CTX (the one Node links),
 * and md5 over MD5_CTX.
 *
 * The context lives in a JS-owned Buffer, so the JS side reads and writes the state (h[8], bit count, partial
 * block) directly to serialize it; this file only runs the compression function at OpenSSL speed.
 *
 * updateAsync hashes a list of received pieces on the libuv thread pool, holding references to them instead of
 * copying: the request thread neither hashes nor copies. The JS side runs one job per context at a time and does
 * not touch the context or the pieces until the callback.
 *
 * keepFreed sets glibc's trim and mmap thresholds (see keepFreedHeap in src/registry/native-hash.ts for why).
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <node_api.h>
#include <openssl/sha.h>
#include <openssl/md5.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

static int get_buffer(napi_env env, napi_value v, void **data, size_t *len) {
  bool is_buf = false, is_ta = false;
  napi_is_buffer(env, v, &is_buf);
  if (is_buf) return napi_get_buffer_info(env, v, data, len) == napi_ok;
  napi_is_typedarray(env, v, &is_ta);
  if (!is_ta) return 0;
  napi_typedarray_type type; size_t n; napi_value ab; size_t off;
  if (napi_get_typedarray_info(env, v, &type, &n, data, &ab, &off) != napi_ok || type != napi_uint8_array) return 0;
  *len = n;
  return 1;
}

/* update(ctx: Buffer(sizeof SHA256_CTX), data: Uint8Array) */
static napi_value update(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *ctx, *data; size_t ctx_len, len;
  if (argc < 2 || !get_buffer(env, argv[0], &ctx, &ctx_len) || ctx_len != sizeof(SHA256_CTX)) return throw_type(env, "bad context");
  if (!get_buffer(env, argv[1], &data, &len)) return throw_type(env, "data must be a Uint8Array");
  SHA256_Update((SHA256_CTX *)ctx, data, len);
  return NULL;
}

/* final(ctx) -> Buffer(32 for a SHA256_CTX, 16 for an MD5_CTX); works on a copy so the context stays usable. */
static napi_value final_(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *ctx; size_t ctx_len;
  if (argc < 1 || !get_buffer(env, argv[0], &ctx, &ctx_len) || (ctx_len != sizeof(SHA256_CTX) && ctx_len != sizeof(MD5_CTX))) return throw_type(env, "bad context");
  int sha = ctx_len == sizeof(SHA256_CTX);
  union { SHA256_CTX sha; MD5_CTX md5; } copy; memcpy(&copy, ctx, ctx_len);
  void *out; napi_value result;
  napi_create_buffer(env, sha ? SHA256_DIGEST_LENGTH : MD5_DIGEST_LENGTH, &out, &result);
  if (sha) SHA256_Final(out, &copy.sha);
  else MD5_Final(out, &copy.md5);
  return result;
}

/* init(kind = 0) -> Buffer holding a fresh SHA256_CTX (kind 0) or MD5_CTX (kind 1) */
static napi_value init_ctx(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1]; int32_t kind = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 1) napi_get_value_int32(env, argv[0], &kind);
  void *out; napi_value result;
  napi_create_buffer(env, kind == 1 ? sizeof(MD5_CTX) : sizeof(SHA256_CTX), &out, &result);
  if (kind == 1) MD5_Init((MD5_CTX *)out);
  else SHA256_Init((SHA256_CTX *)out);
  return result;
}

enum { KIND_SHA256 = 0, KIND_MD5 = 1 };

typedef struct {
  napi_async_work work;
  napi_ref ctx_ref, pieces_ref, callback_ref;
  void *ctx;
  int kind;
  uint32_t count;
  struct piece { void *data; size_t len; } *pieces;
} hash_job;

static void job_execute(napi_env env, void *data) {
  (void)env;
  hash_job *job = data;
  for (uint32_t i = 0; i < job->count; i++) {
    if (job->kind == KIND_SHA256) SHA256_Update((SHA256_CTX *)job->ctx, job->pieces[i].data, job->pieces[i].len);
    else MD5_Update((MD5_CTX *)job->ctx, job->pieces[i].data, job->pieces[i].len);
  }
}

static void job_complete(napi_env env, napi_status status, void *data) {
  hash_job *job = data;
  napi_value callback, global, arg;
  napi_get_reference_value(env, job->callback_ref, &callback);
  napi_get_global(env, &global);
  if (status == napi_ok) napi_get_null(env, &arg);
  else napi_create_string_utf8(env, "hash job cancelled", NAPI_AUTO_LENGTH, &arg);
  napi_delete_reference(env, job->ctx_ref);
  napi_delete_reference(env, job->pieces_ref);
  napi_delete_reference(env, job->callback_ref);
  napi_delete_async_work(env, job->work);
  free(job->pieces);
  free(job);
  napi_call_function(env, global, callback, 1, &arg, NULL);
}

/* updateAsync(kind: 0 sha256 | 1 md5, ctx: Buffer, pieces: Uint8Array[], callback(err)) */
static napi_value update_async(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t kind; void *ctx; size_t ctx_len; bool is_array = false; uint32_t count;
  if (argc < 4 || napi_get_value_int32(env, argv[0], &kind) != napi_ok || (kind != KIND_SHA256 && kind != KIND_MD5)) return throw_type(env, "bad kind");
  if (!get_buffer(env, argv[1], &ctx, &ctx_len) || ctx_len != (kind == KIND_SHA256 ? sizeof(SHA256_CTX) : sizeof(MD5_CTX))) return throw_type(env, "bad context");
  napi_is_array(env, argv[2], &is_array);
  if (!is_array) return throw_type(env, "pieces must be an array");
  napi_get_array_length(env, argv[2], &count);
  hash_job *job = calloc(1, sizeof *job);
  if (!job) return throw_type(env, "out of memory");
  job->pieces = calloc(count ? count : 1, sizeof *job->pieces);
  if (!job->pieces) { free(job); return throw_type(env, "out of memory"); }
  for (uint32_t i = 0; i < count; i++) {
    napi_value piece;
    napi_get_element(env, argv[2], i, &piece);
    if (!get_buffer(env, piece, &job->pieces[i].data, &job->pieces[i].len)) { free(job->pieces); free(job); return throw_type(env, "pieces must be Uint8Arrays"); }
  }
  job->ctx = ctx; job->kind = kind; job->count = count;
  napi_create_reference(env, argv[1], 1, &job->ctx_ref);
  napi_create_reference(env, argv[2], 1, &job->pieces_ref);
  napi_create_reference(env, argv[3], 1, &job->callback_ref);
  napi_value name;
  napi_create_string_utf8(env, "berth_hash", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, job_execute, job_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return NULL;
}

/* keepFreed(trimThreshold, mmapThreshold): glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD; true when glibc took both
 * (false elsewhere: another C library has no such knobs). */
static napi_value keep_freed(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t trim, mmap;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &trim) != napi_ok || napi_get_value_int32(env, argv[1], &mmap) != napi_ok || trim < 0 || mmap < 0)
    return throw_type(env, "thresholds must be non-negative int32s");
  int ok = 0;
#ifdef __GLIBC__
  ok = mallopt(M_TRIM_THRESHOLD, trim) == 1 && mallopt(M_MMAP_THRESHOLD, mmap) == 1;
#endif
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

static napi_value module_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"init", NULL, init_ctx, NULL, NULL, NULL, napi_default, NULL},
    {"update", NULL, update, NULL, NULL, NULL, napi_default, NULL},
    {"final", NULL, final_, NULL, NULL, NULL, napi_default, NULL},
    {"updateAsync", NULL, update_async, NULL, NULL, NULL, napi_default, NULL},
    {"keepFreed", NULL, keep_freed, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 5, props);
  napi_value size; napi_create_uint32(env, sizeof(SHA256_CTX), &size);
  napi_set_named_property(env, exports, "contextSize", size);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
