/*
 * imds: the Azure Instance Metadata Service identity endpoint. Plain
 * HTTP as on 169.254.169.254; every value of the answer is a string.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fakeacr.h"

#define IMDS_PATH		"/metadata/identity/oauth2/token"
#define IMDS_DEFAULT_CLIENT	"5e1f0000-0000-4000-8000-00000000fa4e"

void
imds_error(struct fa_req *fr, int status, const char *error,
    const char *desc)
{
	req_json(fr, status, json_pack("{s:s, s:s}", "error", error,
	    "error_description", desc));
}

/* The client_id the token is for, NULL after answering an error. */
static const char *
imds_identity(struct fa_req *fr, const char *want)
{
	size_t	i;

	if (fa_conf.nclient_ids == 0)
		return want != NULL ? want : IMDS_DEFAULT_CLIENT;
	if (want == NULL && fa_conf.nclient_ids == 1)
		return fa_conf.client_ids[0];
	if (want == NULL) {
		imds_error(fr, 400, "invalid_request", "Multiple user "
		    "assigned identities exist, please specify the clientId / "
		    "resourceId of the identity in the token request");
		return NULL;
	}
	for (i = 0; i < fa_conf.nclient_ids; i++)
		if (strcasecmp(want, fa_conf.client_ids[i]) == 0)
			return fa_conf.client_ids[i];
	imds_error(fr, 400, "invalid_request", "Identity not found");
	return NULL;
}

void
imds_handle(struct fa_req *fr)
{
	struct evkeyvalq	 q;
	const char		*path, *md, *resource, *id;
	char			*tok, exp_in[32], exp_on[32], nbf[32];
	long			 exp;
	time_t			 now = time(NULL);

	if (req_route(fr, "imds", NULL, NULL) ||
	    !req_method(fr, EVHTTP_REQ_GET))
		return;
	path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(fr->fr_req));
	if (path == NULL || strcmp(path, IMDS_PATH) != 0) {
		imds_error(fr, 404, "not_found", "Not found");
		return;
	}
	/* IMDS refuses what a proxy or a forwarded request would send. */
	if ((md = req_header(fr, "Metadata")) == NULL ||
	    strcasecmp(md, "true") != 0 ||
	    req_header(fr, "X-Forwarded-For") != NULL) {
		imds_error(fr, 400, "invalid_request",
		    "Required metadata header not specified");
		return;
	}
	req_params(fr, 0, &q);
	resource = evhttp_find_header(&q, "resource");
	if (evhttp_find_header(&q, "api-version") == NULL)
		imds_error(fr, 400, "invalid_request",
		    "Required query variable 'api-version' is missing");
	else if (resource == NULL)
		imds_error(fr, 400, "invalid_request",
		    "Required query variable 'resource' is missing");
	else if ((id = imds_identity(fr, evhttp_find_header(&q,
	    "client_id"))) != NULL) {
		if ((tok = auth_imds_token(id, resource, &exp)) == NULL) {
			imds_error(fr, 500, "unknown_error", "token failure");
		} else {
			snprintf(exp_in, sizeof(exp_in), "%ld",
			    exp - (long)now);
			snprintf(exp_on, sizeof(exp_on), "%ld", exp);
			snprintf(nbf, sizeof(nbf), "%ld", (long)now);
			req_json(fr, 200, json_pack("{s:s, s:s, s:s, s:s, "
			    "s:s, s:s, s:s, s:s}", "access_token", tok,
			    "client_id", id, "expires_in", exp_in,
			    "expires_on", exp_on, "ext_expires_in", exp_in,
			    "not_before", nbf, "resource", resource,
			    "token_type", "Bearer"));
			free(tok);
		}
	}
	evhttp_clear_headers(&q);
}
