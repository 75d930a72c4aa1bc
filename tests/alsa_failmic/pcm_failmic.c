/* ALSA ioplug capture PCM "failmic": a device that can fail mid-stream, for mica's tests.
 *
 * It plays an interleaved raw file (looping) into the capture stream at `rate` frames per
 * second of CLOCK_MONOTONIC, like a sound card would, and reports an overrun (-EPIPE) when the
 * reader is more than a buffer behind. While the file named by `fail_file` exists, the device
 * behaves like an unplugged USB card: every read fails with -ENODEV and opening it fails with
 * -ENODEV; once the file is removed it can be opened again.
 *
 *   gcc -O2 -Wall -DPIC -fPIC -shared -o libasound_module_pcm_failmic.so pcm_failmic.c -lasound
 *   pcm_type.failmic { lib "/abs/libasound_module_pcm_failmic.so" }
 *   pcm.gone4 { type failmic file "/abs/in.raw" fail_file "/abs/unplug" channels 4
 *               rate 16000 format "S16_LE" }
 *
 * Optional `wallclock 1`: the file is "the room": each start plays it from frame
 * (CLOCK_MONOTONIC seconds * rate) modulo its length, so several such devices, opened at
 * any time (a device reopened after an unplug too), hear the same sound at the same time.
 */
#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
	snd_pcm_ioplug_t io;
	FILE *raw;
	char *fail_file;
	int timer_fd;
	int running;
	size_t frame_bytes;
	struct timespec t_start;
	long wallclock;
	long file_frames;
} failmic_t;

static int unplugged(const failmic_t *f)
{
	return access(f->fail_file, F_OK) == 0;
}

/* Frames the "hardware" has captured since start. */
static snd_pcm_uframes_t captured(const failmic_t *f)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double s = (double)(now.tv_sec - f->t_start.tv_sec) + (now.tv_nsec - f->t_start.tv_nsec) * 1e-9;
	return (snd_pcm_uframes_t)(s * f->io.rate);
}

static void arm(failmic_t *f, double period_s)
{
	struct itimerspec its;
	its.it_interval.tv_sec = its.it_value.tv_sec = (time_t)period_s;
	its.it_interval.tv_nsec = its.it_value.tv_nsec = (long)((period_s - (time_t)period_s) * 1e9);
	timerfd_settime(f->timer_fd, 0, &its, NULL);
}

static int cb_start(snd_pcm_ioplug_t *io)
{
	failmic_t *f = io->private_data;
	clock_gettime(CLOCK_MONOTONIC, &f->t_start);
	if (f->wallclock && f->file_frames > 0) {
		uint64_t now = (uint64_t)f->t_start.tv_sec * io->rate
			       + (uint64_t)f->t_start.tv_nsec * io->rate / 1000000000u;
		fseek(f->raw, (long)(now % (uint64_t)f->file_frames) * (long)f->frame_bytes, SEEK_SET);
	}
	arm(f, (double)io->period_size / io->rate);
	f->running = 1;
	return 0;
}

static int cb_stop(snd_pcm_ioplug_t *io)
{
	failmic_t *f = io->private_data;
	arm(f, 0.0);
	f->running = 0;
	return 0;
}

static snd_pcm_sframes_t cb_pointer(snd_pcm_ioplug_t *io)
{
	failmic_t *f = io->private_data;
	if (!f->running)
		return 0;
	snd_pcm_uframes_t hw = captured(f);
	if (hw - io->appl_ptr > io->buffer_size)
		return -EPIPE;
	return hw % io->buffer_size;
}

static snd_pcm_sframes_t cb_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
				     snd_pcm_uframes_t offset, snd_pcm_uframes_t size)
{
	failmic_t *f = io->private_data;
	if (unplugged(f))
		return -ENODEV;
	char *dst = (char *)areas[0].addr + (areas[0].first + areas[0].step * offset) / 8;
	size_t done = 0;
	while (done < size) {
		size_t n = fread(dst + done * f->frame_bytes, f->frame_bytes, size - done, f->raw);
		if (n == 0) {
			if (ferror(f->raw))
				return -EIO;
			rewind(f->raw);
			continue;
		}
		done += n;
	}
	return (snd_pcm_sframes_t)size;
}

static int cb_poll_revents(snd_pcm_ioplug_t *io, struct pollfd *pfd, unsigned int nfds,
			   unsigned short *revents)
{
	failmic_t *f = io->private_data;
	uint64_t ticks;
	(void)pfd;
	(void)nfds;
	if (read(f->timer_fd, &ticks, sizeof ticks) < 0) {
		/* EAGAIN: no tick yet */
	}
	*revents = 0;
	if (f->running && captured(f) - io->appl_ptr >= io->period_size)
		*revents = POLLIN;
	return 0;
}

static int cb_prepare(snd_pcm_ioplug_t *io)
{
	(void)io;
	return 0;
}

static int cb_close(snd_pcm_ioplug_t *io)
{
	failmic_t *f = io->private_data;
	fclose(f->raw);
	close(f->timer_fd);
	free(f->fail_file);
	free(f);
	return 0;
}

static const snd_pcm_ioplug_callback_t callbacks = {
	.start = cb_start,
	.stop = cb_stop,
	.pointer = cb_pointer,
	.transfer = cb_transfer,
	.poll_revents = cb_poll_revents,
	.prepare = cb_prepare,
	.close = cb_close,
};

SND_PCM_PLUGIN_DEFINE_FUNC(failmic)
{
	snd_config_iterator_t it, next;
	const char *file = NULL, *fail_file = NULL, *format = "S16_LE";
	long channels = 0, rate = 0, wallclock = 0;
	int err;

	snd_config_for_each(it, next, conf) {
		snd_config_t *node = snd_config_iterator_entry(it);
		const char *key;
		if (snd_config_get_id(node, &key) < 0)
			continue;
		if (!strcmp(key, "comment") || !strcmp(key, "type") || !strcmp(key, "hint"))
			continue;
		if (!strcmp(key, "file"))
			err = snd_config_get_string(node, &file);
		else if (!strcmp(key, "fail_file"))
			err = snd_config_get_string(node, &fail_file);
		else if (!strcmp(key, "format"))
			err = snd_config_get_string(node, &format);
		else if (!strcmp(key, "channels"))
			err = snd_config_get_integer(node, &channels);
		else if (!strcmp(key, "rate"))
			err = snd_config_get_integer(node, &rate);
		else if (!strcmp(key, "wallclock"))
			err = snd_config_get_integer(node, &wallclock);
		else {
			SNDERR("failmic: unknown field %s", key);
			return -EINVAL;
		}
		if (err < 0) {
			SNDERR("failmic: bad value for %s", key);
			return -EINVAL;
		}
	}
	if (stream != SND_PCM_STREAM_CAPTURE || !file || !fail_file || channels < 1 || rate < 1) {
		SNDERR("failmic: capture only; needs file, fail_file, channels, rate");
		return -EINVAL;
	}
	if (access(fail_file, F_OK) == 0)
		return -ENODEV; /* "unplugged": nothing to open */
	snd_pcm_format_t fmt = snd_pcm_format_value(format);
	if (fmt == SND_PCM_FORMAT_UNKNOWN) {
		SNDERR("failmic: unknown format %s", format);
		return -EINVAL;
	}

	failmic_t *f = calloc(1, sizeof *f);
	if (!f)
		return -ENOMEM;
	f->raw = fopen(file, "rb");
	f->fail_file = strdup(fail_file);
	f->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (!f->raw || !f->fail_file || f->timer_fd < 0) {
		SNDERR("failmic: cannot open %s", file);
		if (f->raw)
			fclose(f->raw);
		if (f->timer_fd >= 0)
			close(f->timer_fd);
		free(f->fail_file);
		free(f);
		return -ENOENT;
	}
	f->frame_bytes = (size_t)snd_pcm_format_physical_width(fmt) / 8 * (size_t)channels;
	f->wallclock = wallclock;
	if (fseek(f->raw, 0, SEEK_END) == 0)
		f->file_frames = ftell(f->raw) / (long)f->frame_bytes;
	rewind(f->raw);

	f->io.version = SND_PCM_IOPLUG_VERSION;
	f->io.name = "failmic: capture that can be unplugged";
	f->io.callback = &callbacks;
	f->io.private_data = f;
	f->io.poll_fd = f->timer_fd;
	f->io.poll_events = POLLIN;
	f->io.mmap_rw = 0;
	err = snd_pcm_ioplug_create(&f->io, name, stream, mode);
	if (err < 0) {
		fclose(f->raw);
		close(f->timer_fd);
		free(f->fail_file);
		free(f);
		return err;
	}
	unsigned int access_list[] = {SND_PCM_ACCESS_RW_INTERLEAVED};
	unsigned int format_list[] = {(unsigned int)fmt};
	snd_pcm_ioplug_set_param_list(&f->io, SND_PCM_IOPLUG_HW_ACCESS, 1, access_list);
	snd_pcm_ioplug_set_param_list(&f->io, SND_PCM_IOPLUG_HW_FORMAT, 1, format_list);
	snd_pcm_ioplug_set_param_minmax(&f->io, SND_PCM_IOPLUG_HW_CHANNELS, channels, channels);
	snd_pcm_ioplug_set_param_minmax(&f->io, SND_PCM_IOPLUG_HW_RATE, rate, rate);
	snd_pcm_ioplug_set_param_minmax(&f->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES, 64, 1 << 20);
	snd_pcm_ioplug_set_param_minmax(&f->io, SND_PCM_IOPLUG_HW_PERIODS, 2, 1024);
	*pcmp = f->io.pcm;
	return 0;
}

SND_PCM_PLUGIN_SYMBOL(failmic);
