'use strict';
// The same routes as session-proxy's bench app, on Pinus.
exports.default = function (app) {
  return new BenchHandler(app);
};

class BenchHandler {
  constructor(app) {
    this.app = app;
    this.channels = app.get('channelService');
  }

  async echo(msg, session) {
    return msg;
  }

  async set(msg, session) {
    const key = msg.key || 'k';
    session.set(key, msg.value);
    await session.apush(key);
    return { code: 200 };
  }

  async login(msg, session) {
    if (session.uid !== msg.uid) {
      await session.abind(msg.uid);
    }
    session.set('level', 1);
    session.set('name', msg.uid);
    await session.apushAll();
    return { code: 200 };
  }

  async join(msg, session) {
    const channel = this.channels.getChannel(msg.channel || 'all', true);
    channel.add(session.uid, session.frontendId);
    return { code: 200, members: channel.getMembers().length };
  }

  // One `app.rpc` call to the chat server that owns the session (the
  // default route function: by the session's uid hash), answered as is.
  async remote(msg, session) {
    return this.app.rpc.chat.benchRemote.echo.route(session)(msg);
  }

  async fanout(msg, session) {
    const channel = this.channels.getChannel(msg.channel || 'all', false);
    if (!channel) {
      return { code: 500, msg: 'no such channel' };
    }
    await new Promise((resolve, reject) =>
      channel.pushMessage('onFanout', { msg: msg.msg }, {}, (err) => (err ? reject(err) : resolve())));
    return { code: 200, missed: 0 };
  }
}
