/* Does this machine's libiscsi hand a redirected reconnect's socket the descriptor of a file
 * another thread opened? (docs/workers.md, "libiscsi before 1.20.1".)
 *
 *   gcc -O1 -o /tmp/fd-race scripts/libiscsi_fd_race.c -liscsi -lpthread
 *   /tmp/fd-race iscsi://127.0.0.1:3260/IQN/0 60 &      # against a portal with workers
 *   while sleep 3.5; do ss -K dst 127.0.0.1:WORKER_PORT; done   # drop its connection
 *
 * The main thread sends TEST UNIT READY in a loop; libiscsi reconnects after each drop, at
 * the portal, which redirects it. Three other threads open /dev/null and look at it: a
 * file of theirs that turns into a socket was replaced by libiscsi's dup2(). Exit status 1
 * and "files turned into sockets N" when that happened. */
#include <fcntl.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define THREADS 3

static volatile int stop, stolen;

static void *churn(void *arg) {
    (void)arg;
    while (!stop) {
        int fd = open("/dev/null", O_RDONLY);
        struct stat st;
        for (int i = 0; i < 400; i++) { /* hold it a while, looking */
            if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
                stolen++;
                fprintf(stderr, "fd %d: our /dev/null is now a socket\n", fd);
                break;
            }
        }
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s iscsi://HOST:PORT/IQN/LUN SECONDS\n", argv[0]);
        return 2;
    }
    struct iscsi_context *iscsi = iscsi_create_context("iqn.2026-11.org.targetd:fd-race");
    struct iscsi_url *url = iscsi_parse_full_url(iscsi, argv[1]);
    if (url == NULL) {
        fprintf(stderr, "%s\n", iscsi_get_error(iscsi));
        return 2;
    }
    iscsi_set_targetname(iscsi, url->target);
    iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
    if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
        fprintf(stderr, "connect: %s\n", iscsi_get_error(iscsi));
        return 2;
    }
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, churn, NULL);
    time_t end = time(NULL) + atoi(argv[2]);
    int good = 0, other = 0;
    while (time(NULL) < end) {
        struct scsi_task *task = iscsi_testunitready_sync(iscsi, url->lun);
        if (task != NULL && task->status == SCSI_STATUS_GOOD)
            good++;
        else
            other++;
        if (task != NULL)
            scsi_free_scsi_task(task);
    }
    stop = 1;
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    printf("commands good %d, not good %d, files turned into sockets %d\n", good, other, stolen);
    return stolen ? 1 : 0;
}
