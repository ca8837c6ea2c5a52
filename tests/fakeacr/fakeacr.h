/*
 * fakeacr: a fake Azure Container Registry for tests. It speaks the
 * wire protocol pullproxy meets upstream: the registry API with ACR's
 * token flow, the 307 to blob storage, Azure IMDS, and it can be told
 * to fail in the ways the failure taxonomy lists.
 */
#ifndef FAKEACR_H
#define FAKEACR_H

#include <sys/queue.h>

#include <stddef.h>

#include <jansson.h>

struct evhttp_request;
struct evbuffer;
struct event;
struct event_base;
struct evkeyvalq;

enum fa_listener {
	FA_REGISTRY,
	FA_STORAGE,
	FA_IMDS,
	FA_CONTROL,
	FA_NLISTENERS
};

struct fa_conf {
	const char	*listen[FA_NLISTENERS];	/* "127.0.0.1:port" */
	const char	*cert;
	const char	*key;
	const char	*content;
	const char	*service;
	const char	*tenant;
	const char	**client_ids;
	size_t		 nclient_ids;
	const char	**users;		/* "name:password" */
	size_t		 nusers;
	int		 anonymous;
	long		 access_ttl;
	long		 refresh_ttl;
	long		 imds_ttl;
	long		 sas_ttl;
	/* Refresh tokens of an older generation are refused (POST /revoke). */
	long		 refresh_generation;
};

extern struct fa_conf		 fa_conf;
extern struct event_base	*fa_base;

/* One request from arrival until its reply is complete. */
struct fa_req {
	TAILQ_ENTRY(fa_req)	 fr_entry;
	struct evhttp_request	*fr_req;
	enum fa_listener	 fr_listener;
	const char		*fr_endpoint;
	char			*fr_repo;
	char			*fr_ref;
	json_t			*fr_log;
	json_t			*fr_fault;
	int			 fr_status;
	struct evbuffer		*fr_body;
	struct event		*fr_timer;
	int			 fr_stage;
	int			 fr_polls;
};

/* fakeacr.c */
const char	*fakeacr_url(enum fa_listener);

/* fakeacr_req.c */
struct fa_req	*req_new(struct evhttp_request *, enum fa_listener);
int		 req_route(struct fa_req *, const char *, const char *,
		    const char *);
int		 req_method(struct fa_req *, int);
const char	*req_verb(struct fa_req *);
const char	*req_header(struct fa_req *, const char *);
void		 req_set_header(struct fa_req *, const char *, const char *);
int		 req_params(struct fa_req *, int, struct evkeyvalq *);
void		 req_send(struct fa_req *, int);
void		 req_json(struct fa_req *, int, json_t *);
void		 req_error(struct fa_req *, int, const char *, const char *,
		    json_t *);
const char	*req_reason(int);
void		 req_shutdown(void);

/* fakeacr_registry.c */
void		 registry_handle(struct fa_req *);
void		 registry_challenge(struct fa_req *);
void		 registry_error(struct fa_req *, int);

/* fakeacr_storage.c */
void		 storage_handle(struct fa_req *);
void		 storage_error(struct fa_req *, int, const char *,
		    const char *);

/* fakeacr_imds.c */
void		 imds_handle(struct fa_req *);
void		 imds_error(struct fa_req *, int, const char *, const char *);

/* fakeacr_auth.c */
enum auth_kind { AUTH_IMDS, AUTH_REFRESH, AUTH_ACCESS };
int		 auth_init(void);
char		*auth_imds_token(const char *, const char *, long *);
char		*auth_refresh_token(const char *, const char *);
char		*auth_access_token(const char *, json_t *);
json_t		*auth_verify(const char *, enum auth_kind);
int		 auth_basic(const char *, char **, char **);
char		*auth_password(const char *, const char *);
char		*auth_sas_sign(const char *, const char *);
int		 auth_sas_check(const char *, const char *, const char *);
void		 auth_random_hex(char *, size_t);

/* fakeacr_fault.c */
int		 fault_init(void);
void		 fault_free(void);
json_int_t	 fault_add(json_t *, const char **);
int		 fault_delete(json_int_t);
void		 fault_clear(void);
json_t		*fault_list(void);
json_t		*fault_match(struct fa_req *);
void		 fault_reply(struct fa_req *);

/* fakeacr_control.c */
int		 control_init(void);
void		 control_free(void);
void		 control_handle(struct evhttp_request *);
json_t		*control_log(struct fa_req *);
const char	*control_listener_name(enum fa_listener);

/* fakeacr_store.c */
struct store_manifest {
	char		*sm_digest;
	char		*sm_type;
	char		*sm_data;
	size_t		 sm_len;
};
int		 store_valid_name(const char *);
int		 store_valid_tag(const char *);
int		 store_valid_digest(const char *);
int		 store_repo_exists(const char *);
int		 store_manifest(const char *, const char *,
		    struct store_manifest *);
void		 store_manifest_free(struct store_manifest *);
int		 store_blob_open(const char *, const char *, long long *);
json_t		*store_tags(const char *);

#endif
