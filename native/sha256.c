/*
 * berth_sha256: SHA-256 whose state can be saved and resumed, over OpenSSL's SHA256_CTX (the one Node links).
 *
 * The context lives in a JS-owned Buffer, so the JS side reads and writes the state (h[8], bit count, partial
 * block) directly to serialize it; this file only runs the compression function at OpenSSL speed.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <node_api.h>
#include <openssl/sha.h>
#include <string.h>

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

/* final(ctx) -> Buffer(32); works on a copy so the context stays usable. */
static napi_value final_(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *ctx; size_t ctx_len;
  if (argc < 1 || !get_buffer(env, argv[0], &ctx, &ctx_len) || ctx_len != sizeof(SHA256_CTX)) return throw_type(env, "bad context");
  SHA256_CTX copy; memcpy(&copy, ctx, sizeof copy);
  void *out; napi_value result;
  napi_create_buffer(env, SHA256_DIGEST_LENGTH, &out, &result);
  SHA256_Final(out, &copy);
  return result;
}

/* init() -> Buffer holding a fresh SHA256_CTX */
static napi_value init_ctx(napi_env env, napi_callback_info info) {
  (void)info;
  void *out; napi_value result;
  napi_create_buffer(env, sizeof(SHA256_CTX), &out, &result);
  SHA256_Init((SHA256_CTX *)out);
  return result;
}

static napi_value module_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"init", NULL, init_ctx, NULL, NULL, NULL, napi_default, NULL},
    {"update", NULL, update, NULL, NULL, NULL, napi_default, NULL},
    {"final", NULL, final_, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 3, props);
  napi_value size; napi_create_uint32(env, sizeof(SHA256_CTX), &size);
  napi_set_named_property(env, exports, "contextSize", size);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
