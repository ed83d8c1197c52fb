'use strict';
// The remote method of session-proxy's bench app (`chat.benchRemote.echo`):
// answers its argument, for the cost of one `app.rpc` call.
exports.default = function (app) {
  return new BenchRemote(app);
};

class BenchRemote {
  constructor(app) {
    this.app = app;
  }

  async echo(msg) {
    return msg;
  }
}
