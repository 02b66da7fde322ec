//! One frame of the studio as eframe runs it: read what the worker sent, draw the panels, carry
//! out what the user did. The only module that knows both the state and the panels.

use std::time::Instant;

use crate::app::StudioApp;
use crate::settings::Settings;

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let t0 = Instant::now();
        self.poll();
        for action in crate::panels::draw(self, ui) {
            self.apply(action);
        }
        self.frame_took(t0.elapsed().as_secs_f32());
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, Settings::KEY, &self.settings);
    }

    fn on_exit(&mut self) {
        self.cancel();
    }
}
